"""SQLAlchemy's aiosqlite driver, with each statement in one trip to aiosqlite's thread.

aiosqlite runs sqlite3 on a thread of its own, and every call is a trip there and
back: a queue put that wakes the thread, and a wake-up of the event loop when the
answer is ready. SQLAlchemy's adapter makes four such trips per query (open a
cursor, execute, fetch, close) and three per write. Profiled under a burst of
users, these trips, not SQLite's own work, were the largest share of the manager's
CPU per update; here a statement is opened, executed, fetched and closed in one.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]  # description, rows, rowcount, lastrowid


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


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
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

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._trip(operation, seq_of_parameters, many=True)

    async def _trip(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]
                _run, connection._conn, operation, parameters, many=many
            )
        description, rows, self._outcome_rowcount, self._outcome_lastrowid = outcome
        self._outcome_description = description
        self._rows = collections.deque(rows)

    async def _async_soft_close(self) -> None:
        return None  # closed on the thread already

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has no further result sets")

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None

    def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        rows = self._rows
        return [rows.popleft() for _ in range(min(size or self.arraysize, len(rows)))]


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor  # type: ignore[assignment]

    # sqlite3 opens a transaction only before a write, so a session that only read has
    # none, and its commit or rollback would be a trip to the thread to do nothing.
    # (`in_transaction` only asks SQLite's autocommit flag; our statements are not
    # running meanwhile: SQLAlchemy awaits each one on this connection.)

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()

    def _in_transaction(self) -> bool:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        # A closed connection: let the base class raise what it raises.
        return connection._connection is None or connection._conn.in_transaction


class OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module to give `create_async_engine(module=...)` for sqlite+aiosqlite."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own: never holds the exit
        return OneTripConnection(self, await_(connection))  # type: ignore[arg-type]
