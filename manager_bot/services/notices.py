"""The outbox's sender: messages owed to users, delivered by the manager.

Whoever notices something writes a notice: the gateway (which has no bot
token) a spent budget, the health sweep an agent down or back, a digest, or
its own trouble for admins. This renders and sends them. A 429, a 5xx or a
network error leaves a notice owed for the next run, so nothing is dropped (a
429 also holds every send until its retry_after has passed); only a user who
blocked the bot (or a chat Telegram refuses) is given up on.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from dataclasses import dataclass
from html import escape
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
)
from aiogram.types import InlineKeyboardMarkup

from manager_bot import keyboards, texts
from manager_bot.db.models import Agent
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.flood_control import paced_by_caller
from manager_bot.i18n import Languages, language_of, speaking_to
from manager_bot.metrics import HEALTH_NOTIFICATIONS
from manager_bot.services.health import Health

log = logging.getLogger(__name__)


class NoticeKind(enum.StrEnum):
    """What a notice is about; its `detail` (JSON) holds what the message needs."""

    BUDGET = "budget"  # written by the gateway: percent, used, budget
    HEALTH = "health"  # one agent's change: an alert (see `Alert`)
    HEALTH_DIGEST = "health_digest"  # many changes of one owner's agents: {"alerts": [...]}
    SWEEP_FAILED = "sweep_failed"  # to an admin: {"error": ...}
    SWEEP_RECOVERED = "sweep_recovered"  # to an admin
    ADMIN_ALERT = "admin_alert"  # to an admin, in the system's words: {"text": ...}


@dataclass(frozen=True)
class Alert:
    """One agent's health change as an owner reads it (stored in a notice's detail)."""

    username: str
    health: str  # Health's value after the change
    verdict: str  # the verdict's stable kind ("crash_loop", "gave_up", ...)
    reason: str

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> Alert:
        return cls(
            username=str(detail.get("username", "")),
            health=str(detail.get("health", "")),
            verdict=str(detail.get("verdict", "")),
            reason=str(detail.get("reason", "")),
        )

    @property
    def gave_up(self) -> bool:
        return self.verdict == "gave_up"

    def message(self) -> tuple[str, str]:
        """(kind, text): the kind labels the metric and decides the buttons. The reason is
        told from the verdict's stable kind; the raw one is for logs and admins."""
        username, reason = self.username, escape(texts.health_words(self.verdict, self.reason))
        if self.gave_up:
            return "down", texts.HEALTH_GAVE_UP.format(username=username, reason=reason)
        if self.health == Health.DOWN:
            return "down", texts.HEALTH_DOWN.format(username=username, reason=reason)
        if self.health == Health.DEGRADED:
            return "degraded", texts.HEALTH_DEGRADED.format(username=username, reason=reason)
        return "back", texts.HEALTH_BACK.format(username=username)


@dataclass(frozen=True)
class _Message:
    text: str
    markup: InlineKeyboardMarkup | None = None
    metric: str | None = None  # the health notifications' label, if it is one


class NoticeSender:
    """Meant to be one per manager, shared by the notices job (every few seconds) and
    the Notifier (at once, after a sweep): deliveries then run one at a time, so a
    notice is never sent by both, and a 429 holds both."""

    def __init__(
        self,
        *,
        bot: Bot,
        database: Database,
        admin_ids: list[int],
        languages: Languages | None = None,
    ) -> None:
        """`languages`: each notice in its recipient's language (English without)."""
        self._bot = bot
        self._db = database
        self._languages = languages
        self._admins = set(admin_ids)
        self._lock = asyncio.Lock()
        self._hold_until = 0.0  # monotonic: a 429's retry_after, for every chat

    async def deliver(self) -> int:
        """Send what is owed, oldest first; returns how many were sent."""
        async with self._lock:
            if time.monotonic() < self._hold_until:
                return 0  # Telegram asked us to wait: nothing is tried before then
            async with self._db.reading() as session:
                repos = Repositories(session)
                owed: list[_Owed] = []
                for notice in await repos.notices.pending():
                    agent = await repos.agents.get(notice.agent_id) if notice.agent_id else None
                    # Copied out while the session is open: its end expires the rows.
                    owed.append(
                        _Owed(notice.id, notice.key, notice.user_id, notice.kind,
                              json.loads(notice.detail or "{}"), agent)
                    )  # fmt: skip
                    if agent is not None:
                        session.expunge(agent)
            sent = 0
            delayed: set[int] = set()  # chats whose next notice must wait: order is kept
            for owed_one in owed:
                if owed_one.user_id in delayed:
                    continue
                outcome = await self._send(owed_one)
                if outcome is _Outcome.SENT:
                    sent += 1
                elif outcome is _Outcome.DELAYED:
                    delayed.add(owed_one.user_id)
                elif outcome is _Outcome.HELD:
                    break
            return sent

    async def send_unrecorded(
        self, *, user_id: int, kind: NoticeKind, detail: dict[str, Any]
    ) -> bool:
        """One try, outside the outbox: for when the database that holds it is what fails."""
        # The database is what fails here: English, rather than asking it for a language.
        message = self._render(kind=kind, user_id=user_id, detail=detail, agent=None)
        if message is None:
            return False
        try:
            await self._bot.send_message(user_id, message.text, reply_markup=message.markup)
        except (TelegramAPIError, ClientDecodeError) as error:
            log.warning("message to %s not sent: %s", user_id, type(error).__name__)
            return False
        return True

    async def _send(self, notice: _Owed) -> _Outcome:
        with speaking_to(self._languages, await language_of(self._languages, notice.user_id)):
            message = self._render(
                kind=notice.kind, user_id=notice.user_id, detail=notice.detail, agent=notice.agent
            )
        outcome = _Outcome.SENT if message is not None else _Outcome.MOOT
        try:
            if message is not None:
                with paced_by_caller():  # a 429 holds the whole outbox (below), at once
                    await self._bot.send_message(
                        notice.user_id, message.text, reply_markup=message.markup
                    )
        except TelegramRetryAfter as error:  # flood control: nothing more until it passes
            self._hold_until = time.monotonic() + error.retry_after
            log.warning("notice %s delayed %ss by flood control", notice.key, error.retry_after)
            outcome = _Outcome.HELD
        except TelegramForbiddenError:  # blocked the bot: later broadcasts skip them too
            log.info("notice %s not deliverable: the user blocked the bot", notice.key)
            outcome = _Outcome.BLOCKED
        except TelegramBadRequest as error:  # chat not found, user deactivated...
            log.info("notice %s not deliverable: %s", notice.key, error.message)
            outcome = _Outcome.MOOT
        except (TelegramAPIError, ClientDecodeError) as error:  # 5xx, network: owed still
            log.warning("notice %s delayed: %s", notice.key, type(error).__name__)
            outcome = _Outcome.DELAYED
        async with self._db.session() as session:
            repos = Repositories(session)
            if outcome in (_Outcome.DELAYED, _Outcome.HELD):
                await repos.notices.count_attempt(notice.id)
            else:  # done with: sent, or given up on
                await repos.notices.mark_sent(notice.id)
            if outcome is _Outcome.BLOCKED:
                await repos.users.mark_blocked(notice.user_id)
        if outcome is _Outcome.SENT and message is not None and message.metric:
            HEALTH_NOTIFICATIONS.labels(message.metric).inc()
        return outcome

    def _render(
        self, *, kind: str, user_id: int, detail: dict[str, Any], agent: Agent | None
    ) -> _Message | None:
        """The message a notice stands for; None when it no longer has one to send
        (its agent was deleted meanwhile, or its kind is unknown to this version)."""
        if kind == NoticeKind.BUDGET and agent is not None:
            return _Message(
                texts.budget_notice(
                    username=agent.bot_username,
                    percent=int(detail.get("percent", 100)),
                    used=int(detail.get("used", 0)),
                    budget=int(detail.get("budget", 0)),
                ),
                keyboards.budget_notice(agent, can_raise=user_id in self._admins),
            )
        if kind == NoticeKind.HEALTH and agent is not None:
            alert = Alert.from_detail(detail)
            label, text = alert.message()
            markup = None
            if label != "back":
                markup = keyboards.health_alert(agent, gave_up=alert.gave_up)
            return _Message(text, markup, metric=label)
        if kind == NoticeKind.HEALTH_DIGEST:
            lines = "\n".join(
                texts.HEALTH_DIGEST_LINE.format(line=Alert.from_detail(alert).message()[1])
                for alert in detail.get("alerts", [])
            )
            return _Message(texts.HEALTH_DIGEST.format(lines=lines), metric="digest")
        if kind == NoticeKind.SWEEP_FAILED:
            error = escape(str(detail.get("error", "")))
            return _Message(texts.SWEEP_FAILED.format(error=error), metric="admin")
        if kind == NoticeKind.SWEEP_RECOVERED:
            return _Message(texts.SWEEP_RECOVERED, metric="admin")
        if kind == NoticeKind.ADMIN_ALERT:
            text = escape(str(detail.get("text", "")))
            return _Message(texts.ADMIN_ALERT.format(text=text), metric="admin")
        return None


class _Outcome(enum.Enum):
    SENT = enum.auto()
    BLOCKED = enum.auto()  # the user blocked the bot: given up on, and marked
    MOOT = enum.auto()  # refused by Telegram (400) or nothing to send: given up on
    DELAYED = enum.auto()  # 5xx, network: owed, and this chat's later notices wait too
    HELD = enum.auto()  # 429: owed, and nothing more is sent until retry_after passes


@dataclass(frozen=True)
class _Owed:
    id: int
    key: str
    user_id: int
    kind: str
    detail: dict[str, Any]
    agent: Agent | None
