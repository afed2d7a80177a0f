"""Health news for owners (and sweep trouble for admins), in the manager's chat.

Only transitions are news; the sweep already dropped repeats. Here: muted
agents stay silent, an agent's first verdict is news only if it is bad, and an
owner with many changes at once gets one digest instead of a flood.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from html import escape

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError
from aiogram.types import InlineKeyboardMarkup

from manager_bot import keyboards, texts
from manager_bot.db.models import as_utc
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.metrics import HEALTH_NOTIFICATIONS
from manager_bot.services.health import Health, Transition

log = logging.getLogger(__name__)
DIGEST_FROM = 3  # changes for one owner in one sweep that make a digest


def message_for(transition: Transition) -> tuple[str, str]:
    """(kind, text) of the one message about this transition."""
    username, verdict = transition.agent.bot_username, transition.after
    reason = escape(verdict.reason)
    if verdict.kind == "gave_up":
        return "down", texts.HEALTH_GAVE_UP.format(username=username, reason=reason)
    if verdict.health is Health.DOWN:
        return "down", texts.HEALTH_DOWN.format(username=username, reason=reason)
    if verdict.health is Health.DEGRADED:
        return "degraded", texts.HEALTH_DEGRADED.format(username=username, reason=reason)
    return "back", texts.HEALTH_BACK.format(username=username)


def is_muted(transition: Transition, now: datetime) -> bool:
    muted = transition.agent.muted_until
    return muted is not None and as_utc(muted) > now


def is_news(transition: Transition) -> bool:
    # A new agent turning healthy is not news; one that never came up is.
    return not (transition.before is None and transition.after.health is Health.HEALTHY)


class Notifier:
    def __init__(self, *, bot: Bot, database: Database, admin_ids: list[int]) -> None:
        self._bot = bot
        self._db = database
        self._admins = admin_ids
        self._sweep_failing = False

    async def notify(self, transitions: list[Transition]) -> int:
        """Send what is news; returns the number of messages sent."""
        now = datetime.now(UTC)
        by_owner: dict[int, list[Transition]] = defaultdict(list)
        for transition in filter(is_news, transitions):
            if is_muted(transition, now):
                HEALTH_NOTIFICATIONS.labels("muted").inc()
            else:
                by_owner[transition.agent.owner_id].append(transition)
        sent = 0
        for owner_id, news in by_owner.items():
            if len(news) >= DIGEST_FROM:
                lines = "\n".join(
                    texts.HEALTH_DIGEST_LINE.format(line=message_for(t)[1]) for t in news
                )
                sent += await self._send(
                    owner_id, texts.HEALTH_DIGEST.format(lines=lines), "digest"
                )
                continue
            for transition in news:
                kind, text = message_for(transition)
                markup = None
                if kind != "back":
                    markup = keyboards.health_alert(
                        transition.agent, gave_up=transition.after.kind == "gave_up"
                    )
                sent += await self._send(owner_id, text, kind, markup)
        return sent

    async def sweep_failed(self, error: str) -> None:
        """Admins hear of a failing sweep once, and again when it recovers."""
        if self._sweep_failing:
            return
        self._sweep_failing = True
        for admin in self._admins:
            await self._send(admin, texts.SWEEP_FAILED.format(error=escape(error)), "admin")

    async def sweep_succeeded(self) -> None:
        if not self._sweep_failing:
            return
        self._sweep_failing = False
        for admin in self._admins:
            await self._send(admin, texts.SWEEP_RECOVERED, "admin")

    async def _send(
        self, chat_id: int, text: str, kind: str, markup: InlineKeyboardMarkup | None = None
    ) -> int:
        try:
            await self._bot.send_message(chat_id, text, reply_markup=markup)
        except TelegramForbiddenError:
            async with self._db.session() as session:
                await Repositories(session).users.mark_blocked(chat_id)
            return 0
        except TelegramAPIError as error:
            log.warning("health message to %s not sent: %s", chat_id, type(error).__name__)
            return 0
        HEALTH_NOTIFICATIONS.labels(kind).inc()
        return 1
