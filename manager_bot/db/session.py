"""Engine and sessions: one session per unit of work.

PostgreSQL: SQLAlchemy's AsyncSession on asyncpg. SQLite: the sync ORM on the event
loop (inline_session.py), with one writer connection, handed out by a lock, and
READERS reader connections (WAL lets them read beside the writer), handed out by a
semaphore, so that the sync pools never wait. `engine` is an async engine on either,
for what is not a unit of work: migrations, `current_revision`, tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as create_engine
from sqlalchemy.orm import Session

from manager_bot.db.inline_session import InlineSession, create_inline_engine, while_busy

READERS = 2  # SQLite connections for Database.reading()
LOCK_WAIT_SECONDS = 30.0  # SQLite: how long a write waits for another process's lock
# SQLite: how long a session waits for a connection of this process's (the old pool's
# timeout): a wait that cannot end (a task holding the writer waits for one that asks
# for it) ends in an error instead of a hang.
CONNECTION_WAIT_SECONDS = 60.0

# The Database whose SQLite write session the current task is inside, and the task: a
# second one inside the first would wait for ever for the writer connection it holds.
# (A task started inside inherits the variable, but is another task: it may wait.)
_WRITING: ContextVar[tuple[Database, asyncio.Task[Any] | None] | None] = ContextVar(
    "writing", default=None
)


def is_sqlite(url: str) -> bool:
    return make_url(url).drivername.startswith("sqlite")


def ensure_sqlite_directory(url: str) -> None:
    """SQLite creates the file but not its folder (data/ on a fresh clone)."""
    database = make_url(url).database or ""
    if is_sqlite(url) and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_async_engine(url: str) -> AsyncEngine:
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True)
    ensure_sqlite_directory(url)
    engine = create_engine(url, connect_args={"timeout": LOCK_WAIT_SECONDS})

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
        cursor.close()

    return engine


class Database:
    """Sessions for units of work: `async with db.session() as s:` commits on success,
    `async with db.reading() as s:` only reads."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_async_engine(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer: Engine | None = None
        self._readers: Engine | None = None
        if is_sqlite(url):
            self._writer = create_inline_engine(url, connections=1, read_only=False)
            self._readers = create_inline_engine(url, connections=READERS, read_only=True)
        self._writing = asyncio.Lock()
        self._reading = asyncio.Semaphore(READERS)
        self.lock_wait_seconds = LOCK_WAIT_SECONDS
        self.connection_wait_seconds = CONNECTION_WAIT_SECONDS

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        if self._writer is not None:
            with self._not_nested():
                async with self._inline(self._writer, self._writing, writes=True) as inline:
                    yield inline
            return
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for queries only (SQLite refuses writes in it); sees what is committed."""
        if self._readers is not None:
            async with self._inline(self._readers, self._reading, writes=False) as inline:
                yield inline
            return
        async with self._sessions() as session:
            try:
                yield session
            finally:
                await session.rollback()  # ends the read: a held snapshot would go stale

    @asynccontextmanager
    async def _turn(self, gate: asyncio.Lock | asyncio.Semaphore) -> AsyncIterator[None]:
        if gate.locked():
            try:
                async with asyncio.timeout(self.connection_wait_seconds):
                    await gate.acquire()
            except TimeoutError:
                raise TimeoutError(
                    f"no database connection free after {self.connection_wait_seconds:g} s"
                ) from None
        else:
            await gate.acquire()
        try:
            yield
        finally:
            gate.release()

    @contextmanager
    def _not_nested(self) -> Iterator[None]:
        here = (self, asyncio.current_task())
        if _WRITING.get() == here:
            raise RuntimeError("a write session inside another would wait for itself")
        token = _WRITING.set(here)
        try:
            yield
        finally:
            _WRITING.reset(token)

    @asynccontextmanager
    async def _inline(
        self, engine: Engine, gate: asyncio.Lock | asyncio.Semaphore, *, writes: bool
    ) -> AsyncIterator[AsyncSession]:
        """A session on one of `engine`'s connections, handed out by `gate`."""
        async with self._turn(gate), self._begun(engine, writes=writes) as session:
            yield session

    @asynccontextmanager
    async def _begun(self, engine: Engine, *, writes: bool) -> AsyncIterator[AsyncSession]:
        def begin() -> Session:
            session = Session(engine, expire_on_commit=False)
            try:
                session.connection()  # a writer's BEGIN IMMEDIATE: the write lock, or BUSY
            except BaseException:
                session.close()
                raise
            return session

        sync = await while_busy(begin, wait_seconds=self.lock_wait_seconds)
        try:
            yield InlineSession(sync, busy_wait_seconds=None if writes else self.lock_wait_seconds)
            if writes:
                sync.commit()
        finally:
            sync.rollback()  # after a commit, nothing to do
            sync.close()

    async def ping(self) -> None:
        """One round trip; raises the driver's error if the database cannot be reached."""
        async with self.reading() as session:
            await session.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        for engine in (self._writer, self._readers):
            if engine is not None:
                engine.dispose()
