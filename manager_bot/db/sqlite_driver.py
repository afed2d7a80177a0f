"""SQLAlchemy's aiosqlite driver, with SQLite's statements run on the event loop.

aiosqlite runs sqlite3 on a thread of its own, and every call is a trip there and
back: a queue put that wakes the thread, the GIL handed over and back, and a wake-up of
the event loop when the answer is ready. SQLAlchemy's adapter makes four such trips per
query and three per write. Measured in CPU, one trip cost 93 µs where the statement
itself (a lookup by key in a small WAL database) cost 8 µs; under a burst of users the
trips were a sixth of the manager's CPU.

So a statement, a commit and a rollback run here, on the event loop, with SQLite's busy
timeout at zero: a statement that would have to wait for another connection's lock (a
second process writing the same file, `hatchbot migrate`) fails at once with
SQLITE_BUSY, and only then goes to aiosqlite's thread, which waits the connection's
`timeout` for the lock as before. The loop never waits for a lock. What it still does
in line is SQLite's own work: microseconds for the manager's statements, and, every few
megabytes of writes, the WAL checkpoint a commit runs (with synchronous=NORMAL the one
fsync SQLite makes).
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]  # description, rows, rowcount, lastrowid
_T = TypeVar("_T")
_BUSY_RECOVERY = 261  # SQLITE_BUSY | (1 << 8)
DEFAULT_WAIT_SECONDS = 5.0  # sqlite3.connect's own default timeout


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, *, many: bool
) -> _Outcome:
    """On aiosqlite's thread: the whole life of one sqlite3 cursor."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _run_waiting(
    connection: sqlite3.Connection, wait_ms: int, function: Callable[..., _T], *args: Any,
    **kwargs: Any,
) -> _T:  # fmt: skip
    """On aiosqlite's thread: `function`, waiting up to `wait_ms` for another connection's
    lock (the busy timeout is zero while statements run on the loop)."""
    connection.execute(f"PRAGMA busy_timeout = {wait_ms}")
    try:
        return function(connection, *args, **kwargs)
    finally:
        connection.execute("PRAGMA busy_timeout = 0")


def _commit(connection: sqlite3.Connection) -> None:
    connection.commit()


def _rollback(connection: sqlite3.Connection) -> None:
    connection.rollback()


def _waits_for_a_lock(error: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY (another connection holds the lock) or SQLITE_BUSY_RECOVERY (another is
    recovering the WAL): worth waiting for. Not SQLITE_BUSY_SNAPSHOT: a transaction whose
    snapshot went stale fails however long it waits, as it did on the thread."""
    return getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, _BUSY_RECOVERY)


class InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose result is fetched whole with the statement (as SQLAlchemy's
    adapter does anyway: it buffers every row), so nothing is left open on the thread."""

    __slots__ = ("_outcome_description", "_outcome_lastrowid", "_outcome_rowcount")

    arraysize = 1

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # Unlike the base class, no aiosqlite cursor is opened here (that is a trip).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._outcome_description: Any = None
        self._outcome_rowcount = -1
        self._outcome_lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._outcome_description

    @property
    def rowcount(self) -> int:
        return self._outcome_rowcount

    @property
    def lastrowid(self) -> int:
        return self._outcome_lastrowid  # type: ignore[return-value]

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._statement(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._statement(operation, seq_of_parameters, many=True)

    def _statement(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: InlineConnection = self._adapt_connection  # type: ignore[assignment]
        try:
            outcome = connection.run(_run, operation, parameters, many=many)
        except Exception as error:
            connection._handle_exception(error)
        description, rows, self._outcome_rowcount, self._outcome_lastrowid = outcome
        self._outcome_description = description
        self._rows = collections.deque(rows)

    async def _async_soft_close(self) -> None:
        return None  # nothing is left open: rows are fetched with the statement

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has no further result sets")

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]


class InlineConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = InlineCursor  # type: ignore[assignment]

    def run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`function(sqlite3 connection, ...)` on the loop (`_run_here`)."""
        # Through await_ although nothing is awaited unless a lock is in the way:
        # SQLAlchemy's async layer requires each call to have gone through one.
        return await_(self._run_here(function, *args, **kwargs))

    async def _run_here(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Here, on the loop; on aiosqlite's thread only if it must wait for a lock.
        SQLAlchemy uses a connection for one thing at a time, so the thread is never
        running something of this connection's meanwhile (the mutex is the adapter's
        own guard of that, kept for the thread's turn)."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        # One turn of the loop first, as a trip to the thread gave. Measured in a burst of
        # 200 users (bench/manager.py): without it the slowest 1% of answers took
        # 2.3-2.8 s instead of 1.6-1.7 s, for no CPU the bench can tell apart. Which task
        # it lets through sooner is not pinned down (a test of two writers showed none).
        await asyncio.sleep(0)
        if not self._execute_mutex.locked():
            try:
                return function(connection._conn, *args, **kwargs)
            except sqlite3.OperationalError as error:
                if not _waits_for_a_lock(error):
                    raise
        wait_ms = int(self.dbapi.wait_seconds * 1000)
        async with self._execute_mutex:
            outcome: _T = await connection._execute(  # type: ignore[no-untyped-call]
                _run_waiting, connection._conn, wait_ms, function, *args, **kwargs
            )
        return outcome

    # sqlite3 opens a transaction only before a write, so a session that only read has
    # none, and its commit or rollback has nothing to do.
    # (`in_transaction` only asks SQLite's autocommit flag.)

    def commit(self) -> None:
        if self._in_transaction():
            try:
                self.run(_commit)
            except Exception as error:
                self._handle_exception(error)

    def rollback(self) -> None:
        if self._in_transaction():
            try:
                self.run(_rollback)
            except Exception as error:
                self._handle_exception(error)

    def _in_transaction(self) -> bool:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        # A closed connection: let the base class raise what it raises.
        return connection._connection is None or connection._conn.in_transaction


class InlineDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module to give `create_async_engine(module=...)` for sqlite+aiosqlite."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)
        self.wait_seconds = DEFAULT_WAIT_SECONDS

    def connect(self, *arg: Any, **kw: Any) -> InlineConnection:
        # sqlite3 is used from the loop's thread as well as aiosqlite's (never both at once).
        kw["check_same_thread"] = False
        self.wait_seconds = float(kw.get("timeout", DEFAULT_WAIT_SECONDS))
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own: never holds the exit
        adapted = InlineConnection(self, await_(connection))  # type: ignore[arg-type]
        adapted._connection._conn.execute("PRAGMA busy_timeout = 0")
        return adapted
