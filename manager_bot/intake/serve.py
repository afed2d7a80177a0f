"""A manager in webhook mode: its listener, its side of the inboxes, shared bans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from redis.asyncio import Redis

from manager_bot.config import ManagerSettings
from manager_bot.db.session import Database
from manager_bot.i18n import Languages
from manager_bot.intake.bans import BanRefresh
from manager_bot.intake.inbox import UpdateInbox
from manager_bot.intake.listener import WebhookListener, set_manager_webhook
from manager_bot.services.admin import BanList

if TYPE_CHECKING:
    from manager_bot.app import ManagerParts
    from manager_bot.status_server import Startup

log = logging.getLogger(__name__)


def forgetting_language(languages: Languages) -> Callable[[str], None]:
    """A user's lane taken: their /language pick may have changed on another replica."""

    def taken(lane: str) -> None:
        if lane.startswith("u") and lane[1:].isdigit():
            languages.forget(int(lane[1:]))

    return taken


class WebhookIntake:
    """Everything webhook mode adds to a manager, started and stopped as one.

    With REDIS_URL updates go through the shared inboxes (any number of replicas);
    without it (MANAGER_REPLICAS=1) the listener hands them to the Dispatcher here.
    """

    def __init__(
        self,
        *,
        settings: ManagerSettings,
        bot: Bot,
        dispatcher: Dispatcher,
        database: Database,
        bans: BanList,
        languages: Languages | None = None,
        lock_ms: int = 10_000,
        sweep_every: float = 1.0,
    ) -> None:
        assert settings.manager_webhook_secret is not None and settings.public_url
        self._settings = settings
        self._bot = bot
        self._dispatcher = dispatcher
        self._redis: Redis | None = None
        self.inbox: UpdateInbox | None = None
        self._bans: BanRefresh | None = None
        if settings.redis_url is not None:
            self._redis = Redis.from_url(settings.redis_url.get_secret_value())
            self.inbox = UpdateInbox(
                self._redis, bot_id=bot.id, feed=self._feed, parse=self._parse,
                lock_ms=lock_ms, sweep_every=sweep_every,
                on_taken=None if languages is None else forgetting_language(languages),
            )  # fmt: skip
            # One process needs no refresh: its own BanList is the only one.
            self._bans = BanRefresh(bans, database)
        self.listener = WebhookListener(
            bot=bot, dispatcher=dispatcher, secret=settings.manager_webhook_secret,
            inbox=self.inbox,
        )  # fmt: skip

    def _parse(self, body: str) -> Update:
        return Update.model_validate_json(body, context={"bot": self._bot})

    async def _feed(self, update: Update) -> Any:
        return await self._dispatcher.feed_update(self._bot, update)

    async def listen(self) -> int:
        """Listen on MANAGER_WEBHOOK_HOST:MANAGER_WEBHOOK_PORT; the port bound."""
        try:
            return await self.listener.start(
                self._settings.manager_webhook_host, self._settings.manager_webhook_port
            )
        except OSError as error:
            raise SystemExit(
                "python -m manager_bot: the webhook listener cannot listen on "
                f"{self._settings.manager_webhook_host}:{self._settings.manager_webhook_port} "
                f"({error.strerror}); set MANAGER_WEBHOOK_PORT to a free port"
            ) from None

    async def set_webhook(self) -> bool:
        assert self._settings.manager_webhook_secret is not None and self._settings.public_url
        return await set_manager_webhook(
            self._bot, self._dispatcher, public_url=self._settings.public_url,
            secret=self._settings.manager_webhook_secret,
        )  # fmt: skip

    def start_background(self) -> None:
        """The sweep for lanes whose holder died, and the ban refresh."""
        if self.inbox is not None:
            self.inbox.start()
        if self._bans is not None:
            self._bans.start()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking updates, let the one in hand finish, leave the rest in Redis.
        The webhook stays set: the other replicas serve it."""
        await self.listener.stop(grace=grace)
        if self.inbox is not None:
            await self.inbox.stop(grace=grace)
        if self._bans is not None:
            await self._bans.stop()
        if self._redis is not None:
            await self._redis.aclose()


async def serve_webhook(parts: ManagerParts, startup: Startup) -> None:
    """Listen, point Telegram here, run until SIGINT or SIGTERM (as `start_polling`
    does in polling mode), then stop taking updates and leave the webhook set."""
    intake = WebhookIntake(
        settings=parts.settings, bot=parts.bot, dispatcher=parts.dispatcher,
        database=parts.database, bans=parts.bans, languages=parts.languages,
    )  # fmt: skip
    started = False
    try:
        port = await intake.listen()  # before setWebhook: the first delivery finds us
        await startup.run("Telegram setWebhook", intake.set_webhook)
        # From here SIGINT and SIGTERM stop serving (they stopped the start-up until now).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, stop.set)
        await parts.dispatcher.emit_startup(bot=parts.bot)
        started = True
        log.info("webhook mode: listening on port %d", port)
        intake.start_background()
        await stop.wait()
        log.info("stopping: updates not yet handled stay for the other replicas")
    finally:
        await intake.stop()  # first: the update in hand finishes with every part open
        if started:
            await parts.dispatcher.emit_shutdown(bot=parts.bot)
