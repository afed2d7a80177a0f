"""A stand-in for the gateway's `/v1/memory` (manager_bot/gateway/memory.py) that a test
can hold or take down, to see what the runtime does when its memory is slow or gone.

Same contract as the gateway: GET/PUT/DELETE `/chats/{chat_id}`, DELETE `/chats`,
`Authorization: Bearer <credential>`. The gateway itself is tested in
tests/integration/test_gateway_memory.py."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fakes.loopback import serve_on_loopback


class FakeMemory:
    def __init__(self, credential: str) -> None:
        self.credential = credential
        self.chats: dict[int, list[dict[str, str]]] = {}
        self.writes: list[tuple[str, int | None]] = []  # (method, chat_id) as answered
        self.writes_open = asyncio.Event()  # cleared: writes wait (a slow database)
        self.writes_open.set()
        self.down = False  # True: every request gets a 503
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeMemory:
        app = web.Application()
        app.router.add_get("/chats/{chat_id}", self._load)
        app.router.add_put("/chats/{chat_id}", self._save)
        app.router.add_delete("/chats/{chat_id}", self._forget)
        app.router.add_delete("/chats", self._forget)
        self._runner, self.url = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.writes_open.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.credential}":
            return web.Response(status=401)
        if self.down:
            return web.Response(status=503)
        return None

    async def _load(self, request: web.Request) -> web.Response:
        if refused := self._refusal(request):
            return refused
        chat_id = int(request.match_info["chat_id"])
        return web.json_response({"chat_id": chat_id, "turns": self.chats.get(chat_id, [])})

    async def _save(self, request: web.Request) -> web.Response:
        await self.writes_open.wait()
        if refused := self._refusal(request):
            return refused
        chat_id = int(request.match_info["chat_id"])
        self.chats[chat_id] = (await request.json())["turns"]
        self.writes.append(("PUT", chat_id))
        return web.Response(status=204)

    async def _forget(self, request: web.Request) -> web.Response:
        await self.writes_open.wait()
        if refused := self._refusal(request):
            return refused
        if "chat_id" in request.match_info:
            chat_id: int | None = int(request.match_info["chat_id"])
            self.chats.pop(chat_id, None)  # type: ignore[arg-type]
        else:
            chat_id = None
            self.chats.clear()
        self.writes.append(("DELETE", chat_id))
        return web.Response(status=204)
