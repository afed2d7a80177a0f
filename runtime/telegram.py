"""A minimal Bot API client on aiohttp: what an agent needs and nothing more.

aiogram is not imported here on purpose (4.8 s and 169 MB at import, measured):
agents start often and run by the thousand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]


class TelegramApiError(Exception):
    """Telegram answered `ok: false`, or could not be reached (code 0)."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.retry_after = retry_after

    @property
    def is_parse_error(self) -> bool:
        return self.code == 400 and "can't parse entities" in self.description


class FileTooLarge(Exception):
    """A file a user sent is larger than the caller accepts."""


class BotApi:
    """Calls `{api_url}/bot{token}/{method}` with JSON bodies; downloads files users sent."""

    def __init__(self, *, api_url: str, token: str) -> None:
        self._base = f"{api_url}/bot{token}/"
        self._files = f"{api_url}/file/bot{token}/"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=70))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, *, http_timeout: float | None = None, **params: Any) -> Any:
        assert self._session is not None, "BotApi.start() first"
        body = {key: value for key, value in params.items() if value is not None}
        request_timeout = aiohttp.ClientTimeout(total=http_timeout) if http_timeout else None
        try:
            async with self._session.post(
                self._base + method,
                data=json.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=request_timeout,
            ) as response:
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            # The URL holds the token: report the kind of failure, never the error text.
            raise TelegramApiError(0, f"network error ({type(error).__name__})") from None
        if not isinstance(payload, dict):
            raise TelegramApiError(0, "unexpected answer")
        if payload.get("ok"):
            return payload.get("result")
        retry_after = (payload.get("parameters") or {}).get("retry_after")
        raise TelegramApiError(
            int(payload.get("error_code") or 0), str(payload.get("description") or ""), retry_after
        )

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        """A file's bytes (getFile, then its download URL), at most `max_bytes`.

        The download URL holds the bot token: it is used here and never handed on."""
        assert self._session is not None, "BotApi.start() first"
        info = await self.call("getFile", file_id=file_id)
        size = info.get("file_size") if isinstance(info, dict) else None
        if isinstance(size, int) and size > max_bytes:
            raise FileTooLarge(file_id)
        path = info.get("file_path") if isinstance(info, dict) else None
        if not isinstance(path, str) or not path:
            raise TelegramApiError(0, "no file path")
        try:
            async with self._session.get(self._files + path) as response:
                if response.status != 200:
                    raise TelegramApiError(response.status, "download failed")
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > max_bytes:  # file_size may be missing or wrong
                        raise FileTooLarge(file_id)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise TelegramApiError(0, f"network error ({type(error).__name__})") from None
        return bytes(data)

    async def call_with_retry(self, method: str, *, attempts: int = 3, **params: Any) -> Any:
        """Like `call`, honouring 429 retry_after and retrying network errors a few times."""
        for attempt in range(attempts):
            try:
                return await self.call(method, **params)
            except TelegramApiError as error:
                last = attempt == attempts - 1
                if error.code == 429 and not last:
                    await asyncio.sleep(min(error.retry_after or 1, 30))
                elif error.code in (0, 500, 502, 503, 504) and not last:
                    await asyncio.sleep(0.5 * (attempt + 1))
                else:
                    raise
        raise AssertionError("unreachable")
