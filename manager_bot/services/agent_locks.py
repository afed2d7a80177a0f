"""One lock per agent: user actions, health repairs and reconcile take it, then re-read the
agent's row inside it, so nothing acts on a row that changed meanwhile.

One process: an asyncio lock per agent. Several replicas (leader.py): the same, then
a PostgreSQL session-level advisory lock, `pg_advisory_lock(hashtext(agent_id))`, on a
connection of its own. Chosen over a Redis lock with a TTL: an advisory lock lives
exactly as long as its holder's session, so a replica that dies frees it at once, and
one that lives keeps it however long its action takes (a deploy may wait 90 s for
readiness); a TTL would need renewal, and a renewal missed (a paused process) lets a
second holder in while the first still acts. PostgreSQL is already what HA runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

UNLOCK_TIMEOUT = 5.0


class AgentLocks:
    """In-process locks; with `shared_url`, also held across processes (PostgreSQL)."""

    def __init__(self, shared_url: str | None = None) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        # A connection per lock held, outside the work pool: a waiter never takes a
        # connection the holder needs for its own queries.
        self._engine: AsyncEngine | None = (
            create_async_engine(shared_url, poolclass=NullPool) if shared_url else None
        )

    @property
    def shared(self) -> bool:
        return self._engine is not None

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    @asynccontextmanager
    async def hold(self, agent_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        self._users[agent_id] = self._users.get(agent_id, 0) + 1
        try:
            # The process's own waiters queue here first: one connection per agent at most.
            async with lock:
                if self._engine is None:
                    yield
                else:
                    async with self._across_replicas(agent_id):
                        yield
        finally:
            self._users[agent_id] -= 1
            if not self._users[agent_id]:  # nobody holds or waits: forget it
                del self._users[agent_id]
                del self._locks[agent_id]

    @asynccontextmanager
    async def _across_replicas(self, agent_id: str) -> AsyncIterator[None]:
        assert self._engine is not None
        async with self._engine.connect() as connection:
            key = {"agent": agent_id}
            await connection.execute(text("SELECT pg_advisory_lock(hashtext(:agent))"), key)
            await connection.commit()  # no transaction left open while the lock is held
            try:
                yield
            finally:
                await _to_the_end(self._unlock(connection, key))

    @staticmethod
    async def _unlock(connection: AsyncConnection, key: dict[str, str]) -> None:
        # Bounded: with the database gone, closing the connection frees the lock anyway.
        async with asyncio.timeout(UNLOCK_TIMEOUT):
            await connection.execute(text("SELECT pg_advisory_unlock(hashtext(:agent))"), key)
            await connection.commit()


async def _to_the_end(step: Coroutine[Any, Any, None]) -> None:
    """Run `step` to its end even if we are cancelled meanwhile (once or more), then
    let the cancellation go on. A plain shield is not enough here: a second cancel
    would leave the `async with connect()` above, closing the connection under the
    unlock still using it, and both would wait for each other."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    with contextlib.suppress(TimeoutError):  # UNLOCK_TIMEOUT: the close frees it
        task.result()
