"""Engine and sessions: one AsyncSession per unit of work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from manager_bot.db.sqlite_driver import InlineDbapi

READERS = 2  # SQLite connections for Database.reading()


def is_sqlite(url: str) -> bool:
    return make_url(url).drivername.startswith("sqlite")


def ensure_sqlite_directory(url: str) -> None:
    """SQLite creates the file but not its folder (data/ on a fresh clone)."""
    database = make_url(url).database or ""
    if is_sqlite(url) and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, *, read_only: bool = False) -> AsyncEngine:
    if is_sqlite(url):
        ensure_sqlite_directory(url)
        # One connection: SQLite has one writer, and writers racing on several
        # connections meet SQLITE_BUSY, whose retry sleeps (up to 100 ms a time)
        # were most of the manager's latency under load. Queued on one connection,
        # each statement waits only for the ones ahead of it.
        # No rollback when a connection goes back to the pool: Database.session always
        # commits or rolls back itself, and that round trip was one in six of each session's.
        # InlineDbapi: statements run on the event loop, not on aiosqlite's thread (see there).
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=READERS if read_only else 1,
            max_overflow=0, pool_timeout=60, pool_reset_on_return=None,
            module=InlineDbapi(),
        )  # fmt: skip

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            # Foreign keys are off by default in SQLite; WAL lets readers and a writer coexist.
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL never corrupts; it only skips an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            if read_only:
                cursor.execute("PRAGMA query_only=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


class Database:
    """The engine and its session factory; `async with db.session() as s:` commits on success."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: reads get connections of their own (WAL lets them run beside the one
        # writer), so a check made before an answer does not queue behind a deploy's
        # writes. Other databases pool connections already.
        self._read_engine = create_engine(url, read_only=True) if is_sqlite(url) else self.engine
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            try:
                yield session
                await session.commit()
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for queries only (SQLite refuses writes in it); sees what is committed."""
        async with self._read_sessions() as session:
            try:
                yield session
            finally:
                await session.rollback()  # ends the read: a held snapshot would go stale

    @asynccontextmanager
    async def connection_for_reads(self) -> AsyncIterator[AsyncConnection]:
        """A bare connection for a prebuilt query on a hot path: no ORM session around it,
        which costs about as much as the query itself. Sees what is committed."""
        async with self._read_engine.connect() as connection:
            yield connection

    async def ping(self) -> None:
        """One round trip; raises the driver's error if the database cannot be reached."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
        await self._read_engine.dispose()
