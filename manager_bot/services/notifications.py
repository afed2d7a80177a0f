"""Health news for owners (and sweep trouble for admins), in the manager's chat.

Only transitions are news; the sweep already dropped repeats. Here: muted
agents stay silent, an agent's first verdict is news only if it is bad, and an
owner with many changes at once gets one digest instead of a flood.

News goes through the outbox (`notices`), not straight to Telegram: a 429 or a
5xx delays a message, never drops it. Each message has a key of its own (the
agent, the moment its previous verdict was stored, the new verdict), so writing
it twice owes it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot

from manager_bot.db.models import as_utc
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.metrics import HEALTH_NOTIFICATIONS
from manager_bot.services.health import Health, Transition
from manager_bot.services.notices import Alert, NoticeKind, NoticeSender

log = logging.getLogger(__name__)
DIGEST_FROM = 3  # changes for one owner in one sweep that make a digest


@dataclass(frozen=True)
class _News:
    """A notice to write: one message owed to one chat."""

    key: str
    user_id: int
    kind: NoticeKind
    agent_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def alert_for(transition: Transition) -> Alert:
    verdict = transition.after
    return Alert(
        username=transition.agent.bot_username,
        health=verdict.health.value,
        verdict=verdict.kind,
        reason=verdict.reason,
    )


def alert_key(transition: Transition) -> str:
    """The same change of the same agent has the same key, whoever writes it."""
    agent = transition.agent
    since = f"{as_utc(agent.health_at).timestamp():.6f}" if agent.health_at else "new"
    return f"health:{agent.id}:{since}:{transition.after.kind}"


def is_muted(transition: Transition, now: datetime) -> bool:
    muted = transition.agent.muted_until
    return muted is not None and as_utc(muted) > now


def is_news(transition: Transition) -> bool:
    # A new agent turning healthy is not news; one that never came up is.
    return not (transition.before is None and transition.after.health is Health.HEALTHY)


class Notifier:
    """Writes health news to the outbox, then has `notices` send it at once.

    `notices` should be the manager's one NoticeSender (the notices job's): sharing
    it keeps a notice from being sent by both jobs at the same moment, and a 429
    holds both. Without it, what is written waits for the notices job (every few
    seconds).
    """

    def __init__(
        self, *, bot: Bot, database: Database, admin_ids: list[int],
        notices: NoticeSender | None = None,
    ) -> None:  # fmt: skip
        self._db = database
        self._admins = admin_ids
        self._deliver_now = notices is not None
        self._notices = notices or NoticeSender(bot=bot, database=database, admin_ids=admin_ids)
        self._sweep_failing_since: datetime | None = None

    async def notify(self, transitions: list[Transition]) -> int:
        """Owe what is news; returns the number of messages owed."""
        now = datetime.now(UTC)
        by_owner: dict[int, list[Transition]] = defaultdict(list)
        for transition in filter(is_news, transitions):
            if is_muted(transition, now):
                HEALTH_NOTIFICATIONS.labels("muted").inc()
            else:
                by_owner[transition.agent.owner_id].append(transition)
        owed: list[_News] = []
        for owner_id, news in by_owner.items():
            if len(news) >= DIGEST_FROM:
                alerts = [asdict(alert_for(t)) for t in news]
                owed.append(
                    _News(f"health-digest:{owner_id}:{now.timestamp():.6f}", owner_id,
                          NoticeKind.HEALTH_DIGEST, detail={"alerts": alerts})
                )  # fmt: skip
                continue
            for transition in news:
                owed.append(
                    _News(alert_key(transition), owner_id, NoticeKind.HEALTH,
                          transition.agent.id, asdict(alert_for(transition)))
                )  # fmt: skip
        await self._owe(owed)
        return len(owed)

    async def sweep_failed(self, error: str) -> None:
        """Admins hear of a failing sweep once, and again when it recovers."""
        if self._sweep_failing_since is not None:
            return
        since = datetime.now(UTC)
        owed = [
            _News(f"sweep-failed:{admin}:{since.timestamp():.6f}", admin,
                  NoticeKind.SWEEP_FAILED, detail={"error": error})
            for admin in self._admins
        ]  # fmt: skip
        try:
            await self._owe(owed)
        except Exception as outbox_error:  # the database (holding the outbox) may be what fails
            log.warning("sweep trouble not written to the outbox: %s", type(outbox_error).__name__)
            for news in owed:  # told once, directly; nothing keeps it if Telegram fails too
                await self._notices.send_unrecorded(
                    user_id=news.user_id, kind=news.kind, detail=news.detail
                )
        self._sweep_failing_since = since

    async def sweep_succeeded(self) -> None:
        since = self._sweep_failing_since
        if since is None:
            return
        await self._owe(
            [
                _News(f"sweep-recovered:{admin}:{since.timestamp():.6f}", admin,
                      NoticeKind.SWEEP_RECOVERED)
                for admin in self._admins
            ]
        )  # fmt: skip
        self._sweep_failing_since = None  # only once written: a failed write is tried again

    async def tell_admins(self, text: str) -> None:
        """Something admins must know (reconcile refusing to delete, say), through the
        outbox; the same words are owed once."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        await self._owe(
            [
                _News(f"admin:{admin}:{digest}", admin, NoticeKind.ADMIN_ALERT,
                      detail={"text": text})
                for admin in self._admins
            ]
        )  # fmt: skip

    async def _owe(self, owed: list[_News]) -> None:
        """Write the notices in one transaction, then try to send them at once."""
        if not owed:
            return
        async with self._db.session() as session:
            outbox = Repositories(session).notices
            for news in owed:
                await outbox.owe(
                    key=news.key, user_id=news.user_id, kind=news.kind, agent_id=news.agent_id,
                    detail=json.dumps(news.detail),
                )  # fmt: skip
        if not self._deliver_now:
            return
        try:
            await self._notices.deliver()
        except Exception as error:  # owed still: the notices job tries again
            log.warning("health messages not sent yet: %s", type(error).__name__)
