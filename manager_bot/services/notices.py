"""The outbox's sender: messages owed to users, delivered by the manager.

Whoever notices something (the gateway, which has no bot token) writes a
notice; this sends it. A 429, a 5xx or a network error leaves it owed for the
next run, so nothing is dropped; only a user who blocked the bot (or a chat
Telegram refuses) is given up on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramForbiddenError

from manager_bot import keyboards, texts
from manager_bot.db.models import Agent
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database

log = logging.getLogger(__name__)


class NoticeSender:
    def __init__(self, *, bot: Bot, database: Database, admin_ids: list[int]) -> None:
        self._bot = bot
        self._db = database
        self._admins = set(admin_ids)

    async def deliver(self) -> int:
        """Send what is owed; returns how many were sent."""
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
        for owed_one in owed:
            if await self._send(owed_one):
                sent += 1
        return sent

    async def _send(self, notice: _Owed) -> bool:
        agent, detail = notice.agent, notice.detail
        done = True
        try:
            if agent is not None and notice.kind == "budget":
                await self._bot.send_message(
                    notice.user_id,
                    texts.budget_notice(
                        username=agent.bot_username,
                        percent=int(detail.get("percent", 100)),
                        used=int(detail.get("used", 0)),
                        budget=int(detail.get("budget", 0)),
                    ),
                    reply_markup=keyboards.budget_notice(
                        agent, can_raise=notice.user_id in self._admins
                    ),
                )
        except (TelegramForbiddenError, TelegramBadRequest) as error:
            log.info("notice %s not deliverable: %s", notice.key, type(error).__name__)
        except TelegramAPIError as error:  # 429, 5xx: owed still, tried again next run
            log.warning("notice %s delayed: %s", notice.key, type(error).__name__)
            done = False
        async with self._db.session() as session:
            notices = Repositories(session).notices
            await (notices.mark_sent(notice.id) if done else notices.count_attempt(notice.id))
        return done


@dataclass(frozen=True)
class _Owed:
    id: int
    key: str
    user_id: int
    kind: str
    detail: dict[str, Any]
    agent: Agent | None
