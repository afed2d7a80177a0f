"""One lock per agent: user actions, health repairs and reconcile take it, then re-read the
agent's row inside it, so nothing acts on a row that changed meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class AgentLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        self._users[agent_id] = self._users.get(agent_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[agent_id] -= 1
            if not self._users[agent_id]:  # nobody holds or waits: forget it
                del self._users[agent_id]
                del self._locks[agent_id]
