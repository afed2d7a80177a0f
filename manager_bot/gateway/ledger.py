"""Counted usage and the daily budget: what an agent has used, spends, and may still spend.

Usage is counted in memory and written in batches every `flush_seconds`
(GATEWAY_FLUSH_SECONDS), so a completion costs no database write; a crash loses
at most one interval of counts. The budget check admits a request only if what
is stored, what is counted but not yet stored, what requests in flight may
still spend, and an upper bound of this request's prompt all fit: so the
agent can overrun its budget by at most this request's completion (`max_tokens`)
per gateway replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

from manager_bot.db.repositories import Repositories, UsageDelta
from manager_bot.db.session import Database
from manager_bot.gateway.accounts import AgentAccount

log = logging.getLogger(__name__)
THRESHOLDS = (80, 100)  # per cent of the budget at which the owner is told, once a day


class Admission(enum.Enum):
    ADMITTED = "admitted"
    EXHAUSTED = "exhausted"  # today's budget is spent
    RESERVED = "reserved"  # what is left is held by requests in flight: try again shortly


@dataclass
class _Counts:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


@dataclass(frozen=True)
class Notice:
    key: str
    user_id: int
    agent_id: str
    kind: str
    detail: str


class UsageLedger:
    def __init__(self, *, database: Database, flush_seconds: float) -> None:
        self._db = database
        self._interval = flush_seconds
        self._pending: dict[tuple[str, date], _Counts] = defaultdict(_Counts)
        # Taken out of `_pending` by a flush and not yet confirmed stored: still counted.
        self._writing: dict[tuple[str, date], _Counts] = {}
        self._stored: dict[tuple[str, date], int] = {}  # newest token total seen in the DB
        self._reserved: dict[str, int] = defaultdict(int)
        self._notices: dict[str, Notice] = {}
        self._told: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- the budget ------------------------------------------------------------------

    def used(self, account: AgentAccount) -> int:
        """Today's tokens: stored (the newest of the row read and our last write) plus
        counted here but not yet stored."""
        key = (account.agent_id, account.day)
        stored = max(account.used_in_database, self._stored.get(key, 0))
        return stored + sum(
            counts.prompt_tokens + counts.completion_tokens
            for counts in (self._pending.get(key), self._writing.get(key))
            if counts is not None
        )

    def admit(self, account: AgentAccount, *, prompt_bound: int, max_tokens: int) -> Admission:
        """Reserve room for one request, or say why not: the budget is spent (the owner is
        owed the 100% notice), or what is left is reserved by requests in flight."""
        if account.budget > 0:
            used = self.used(account)
            if used + prompt_bound > account.budget:
                self._owe(account, 100, used)
                return Admission.EXHAUSTED
            if used + self._reserved[account.agent_id] + prompt_bound > account.budget:
                return Admission.RESERVED
        self._reserved[account.agent_id] += prompt_bound + max_tokens
        return Admission.ADMITTED

    def settle(
        self,
        account: AgentAccount,
        *,
        reserved: int,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """A request ended: free its reservation, count what it really used."""
        self._reserved[account.agent_id] = max(0, self._reserved[account.agent_id] - reserved)
        if not self._reserved[account.agent_id]:
            del self._reserved[account.agent_id]
        counts = self._pending[(account.agent_id, account.day)]
        counts.prompt_tokens += prompt_tokens
        counts.completion_tokens += completion_tokens
        counts.requests += 1
        if account.budget > 0:
            used = self.used(account)
            for percent in THRESHOLDS:
                if used * 100 >= account.budget * percent:
                    self._owe(account, percent, used)

    def _owe(self, account: AgentAccount, percent: int, used: int) -> None:
        key = f"budget-{percent}:{account.agent_id}:{account.day.isoformat()}"
        if key in self._told:
            return
        self._told.add(key)
        detail = json.dumps({"percent": percent, "used": used, "budget": account.budget})
        self._notices[key] = Notice(key, account.owner_id, account.agent_id, "budget", detail)

    # -- writing ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever())

    async def close(self) -> None:
        """Stop the loop and write what is counted (a clean stop loses nothing). A write
        in progress is waited for, never cancelled: cancelled mid-transaction, it held
        SQLite's one writer until the final flush timed out, and lost the counts."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _flush_forever(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
            try:
                await self.flush()
            except Exception:  # the counts stay pending; the next flush tries again
                log.exception("writing usage failed; it will be retried")

    async def flush(self) -> int:
        """Write counted usage and owed notices in one transaction; returns rows written."""
        if self._writing:  # one flush at a time (close() may meet the loop's)
            return 0
        pending, self._pending = self._pending, defaultdict(_Counts)
        notices, self._notices = self._notices, {}
        if not pending and not notices:
            return 0
        self._writing = dict(pending)
        deltas = [
            UsageDelta(agent_id, day, c.prompt_tokens, c.completion_tokens, c.requests)
            for (agent_id, day), c in pending.items()
        ]
        try:
            async with self._db.session() as session:
                repos = Repositories(session)
                totals = await repos.usage.add(deltas)
                for notice in notices.values():
                    await repos.notices.owe(
                        key=notice.key, user_id=notice.user_id, kind=notice.kind,
                        agent_id=notice.agent_id, detail=notice.detail,
                    )  # fmt: skip
        except BaseException:
            self._writing = {}
            self._restore(pending, notices)
            raise
        for key, total in totals.items():
            self._stored[key] = max(self._stored.get(key, 0), total)
        self._writing = {}
        return len(deltas)

    def _restore(
        self, pending: dict[tuple[str, date], _Counts], notices: dict[str, Notice]
    ) -> None:
        for key, counts in pending.items():
            merged = self._pending[key]
            merged.prompt_tokens += counts.prompt_tokens
            merged.completion_tokens += counts.completion_tokens
            merged.requests += counts.requests
        self._notices = {**notices, **self._notices}
