"""What every gateway endpoint answers itself: OpenAI-shaped errors, and who is calling."""

from __future__ import annotations

from aiohttp import web


class Refused(Exception):
    """A request the gateway answers itself: status, stable code, plain message."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(code)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": "gateway_error", "code": self.code}}
        return web.json_response(body, status=self.status, headers=self.headers)


def credential_of(request: web.Request) -> str:
    """The agent's gateway credential, from `Authorization: Bearer …` ("" if none)."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
