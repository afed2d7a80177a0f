"""The manager's webhook listener: `POST /telegram/{path}`, checked, stored, acknowledged.

Written here rather than with aiogram's SimpleRequestHandler: that one answers a
body that is not an Update with a 500 (Telegram would retry it for a day) and
closes the bot's session when the app stops; this one needs a few lines more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from aiohttp import web
from pydantic import SecretStr, ValidationError

from manager_bot.intake.inbox import UpdateInbox

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram keeps at most this many deliveries open to us at once. Each one only waits
# for a Redis write, so a few are plenty; per-user order does not depend on it (the
# inbox sorts by update_id).
MAX_CONNECTIONS = 20
MAX_BODY = 1024 * 1024  # an Update is a few kilobytes; files come by getFile


def webhook_path(secret: SecretStr) -> str:
    """The path segment after /telegram/: the first 32 hex digits of the secret's
    SHA-256, so the URL names no secret yet is unguessable without it."""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:32]


def webhook_url(public_url: str, secret: SecretStr) -> str:
    return f"{public_url.rstrip('/')}/telegram/{webhook_path(secret)}"


def allowed_updates(dispatcher: Dispatcher) -> list[str]:
    """What the routers handle (as polling asks for) and `managed_bot`, which Telegram
    sends only to those who ask for it by name."""
    return sorted({*dispatcher.resolve_used_update_types(), "managed_bot"})


async def set_manager_webhook(
    bot: Bot, dispatcher: Dispatcher, *, public_url: str, secret: SecretStr
) -> bool:
    """Point Telegram at this manager. Every replica does it at start, with the same
    values: the last one wins and they are all equal. Nothing deletes it on stop."""
    return await bot.set_webhook(
        url=webhook_url(public_url, secret),
        secret_token=secret.get_secret_value(),
        allowed_updates=allowed_updates(dispatcher),
        max_connections=MAX_CONNECTIONS,
    )


class WebhookListener:
    """The aiohttp app Telegram posts to. With an inbox (Redis) an update is stored
    before the 200; without one (MANAGER_REPLICAS=1) it is handled in this process,
    in a task, as polling does."""

    def __init__(
        self,
        *,
        bot: Bot,
        dispatcher: Dispatcher,
        secret: SecretStr,
        inbox: UpdateInbox | None,
    ) -> None:
        self._bot = bot
        self._dispatcher = dispatcher
        self._secret = secret.get_secret_value().encode()
        self._path = webhook_path(secret)
        self._inbox = inbox
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _parse(self, body: str) -> Update:
        return Update.model_validate_json(body, context={"bot": self._bot})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/telegram/{path}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        # The path is derived from the secret too: both must match, compared in constant time.
        path_ok = secrets.compare_digest(request.match_info["path"].encode(), self._path.encode())
        if not (secrets.compare_digest(given, self._secret) and path_ok):
            return web.Response(status=401, text="unauthorized")
        try:
            body = await request.text()
            update = self._parse(body)
        except (ValidationError, ValueError, UnicodeDecodeError):
            return web.Response(status=400, text="not an Update")
        if self._inbox is not None:
            # Compact JSON of what Telegram sent: the inbox member, unique by update_id.
            stored = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
            await self._inbox.put(update, stored)
        else:
            self._spawn(self._dispatcher.feed_update(self._bot, update))
        return web.Response(text="ok")

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, host: str, port: int) -> int:
        """Listen; the port bound (port 0: any free one)."""
        self._runner = web.AppRunner(self.app(), access_log=None)  # URLs hold the path
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking updates (Telegram retries them at another replica); what this
        process is handling without an inbox gets `grace` seconds."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
