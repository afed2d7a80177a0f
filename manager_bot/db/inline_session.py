"""SQLite sessions run by SQLAlchemy's sync ORM on the event loop, without greenlets.

SQLAlchemy's asyncio layer runs each call of an AsyncSession (a statement, a commit, a
close) in a new greenlet, and each driver call inside it switches back to the loop and
awaits: four switches and a loop turn per statement, which cost more than the
manager's SQLite statements themselves (a lookup by key in a small WAL database takes
microseconds). SQLite never needs to wait on the network, so for it the manager keeps
a sync engine and its sessions call the sync Session directly.

What could still wait is a lock held by another process (a second manager on the same
file, `hatchbot migrate`). SQLite's busy timeout is zero here, so such a wait fails at
once with SQLITE_BUSY instead of blocking the loop, and the wait happens where it can
be awaited: a write session takes the write lock first of all (BEGIN IMMEDIATE), and
on SQLITE_BUSY sleeps and tries again; a read refused with SQLITE_BUSY (the WAL being
recovered, or the file held exclusively) is made again the same way. Once a write
session holds the lock no statement of it can be refused for a writer's lock, and in
WAL mode readers never block it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

_T = TypeVar("_T")
_BUSY_RECOVERY = 261  # SQLITE_BUSY | (1 << 8)
_PREBUFFERED = {"prebuffer_rows": True}  # rows fetched with the statement, as AsyncSession does
FIRST_RETRY_SECONDS = 0.002
LONGEST_RETRY_SECONDS = 0.1


def is_busy(error: BaseException) -> bool:
    """SQLITE_BUSY (another connection holds the lock) or SQLITE_BUSY_RECOVERY: worth
    trying again. Not SQLITE_BUSY_SNAPSHOT, which no wait changes."""
    original = error.orig if isinstance(error, OperationalError) else error
    code = getattr(original, "sqlite_errorcode", None)
    return isinstance(original, sqlite3.OperationalError) and code in (
        sqlite3.SQLITE_BUSY,
        _BUSY_RECOVERY,
    )


async def while_busy(attempt: Callable[[], _T], *, wait_seconds: float) -> _T:
    """`attempt()`, made again after a short sleep each time SQLite answers SQLITE_BUSY,
    for up to `wait_seconds`; then its error."""
    deadline = time.monotonic() + wait_seconds
    pause = FIRST_RETRY_SECONDS
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_busy(error) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, LONGEST_RETRY_SECONDS)


def create_inline_engine(url: str, *, connections: int, read_only: bool) -> Engine:
    """A sync engine on `url` (sqlite+aiosqlite:/// or sqlite:///, as configured) whose
    connections never wait for a lock (busy timeout zero), with the manager's pragmas.
    Writes (not `read_only`) begin with the write lock: BEGIN IMMEDIATE."""
    sync_url = url.replace("sqlite+aiosqlite:", "sqlite:", 1)
    engine = create_sync_engine(
        sync_url,
        # Used from the loop's thread only; QueuePool so that `connections` are kept open.
        connect_args={"check_same_thread": False, "timeout": 0, "isolation_level": None},
        poolclass=QueuePool, pool_size=connections, max_overflow=0, pool_timeout=0,
        pool_reset_on_return=None,
    )  # fmt: skip

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL never corrupts; it only skips an fsync per commit.
        cursor.execute("PRAGMA synchronous=NORMAL")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # isolation_level=None: sqlite3 leaves transactions to us (SQLAlchemy's recipe).
        # A reader reads in autocommit, as sqlite3's default did for SELECTs. On the
        # driver's connection: SQLAlchemy's execution of it cost a fifth of a session.
        if not read_only:
            connection.connection.driver_connection.execute("BEGIN IMMEDIATE")

    return engine


class InlineSession(AsyncSession):
    """An AsyncSession whose hot calls run its sync Session directly (see the module).
    Any other call goes through AsyncSession's greenlet as usual, and works the same."""

    def __init__(self, sync_session: Session, *, busy_wait_seconds: float | None = None) -> None:
        """`busy_wait_seconds`: a reader's; its statements are made again on SQLITE_BUSY."""
        # AsyncSession makes its sync Session with this "class"; here it exists already.
        super().__init__(sync_session_class=cast(type[Session], lambda **_: sync_session))
        self._busy_wait_seconds = busy_wait_seconds

    async def _run(self, call: Callable[[], _T]) -> _T:
        """`call()`; a reader's made again while SQLite answers SQLITE_BUSY."""
        if self._busy_wait_seconds is None:
            return call()
        return await while_busy(call, wait_seconds=self._busy_wait_seconds)

    async def execute(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        options = kw.pop("execution_options", None)
        options = {**options, **_PREBUFFERED} if options else _PREBUFFERED
        return await self._run(
            lambda: self.sync_session.execute(statement, params, execution_options=options, **kw)
        )

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return (await self.execute(statement, params, **kw)).scalar()

    async def scalars(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return (await self.execute(statement, params, **kw)).scalars()

    async def get(self, entity: Any, ident: Any, **kw: Any) -> Any:
        return await self._run(lambda: self.sync_session.get(entity, ident, **kw))

    async def flush(self, objects: Any = None) -> None:
        self.sync_session.flush(objects)

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)

    async def commit(self) -> None:
        self.sync_session.commit()

    async def rollback(self) -> None:
        self.sync_session.rollback()

    async def close(self) -> None:
        self.sync_session.close()
