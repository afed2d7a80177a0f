"""The SQLite driver behaves as SQLAlchemy's own: rows, counts, ids, errors, commits and
rollbacks, through the manager's Database on a real SQLite file; and a statement that
must wait for another connection's lock waits off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from manager_bot.db.migrate import upgrade
from manager_bot.db.models import AuditEntry, User
from manager_bot.db.session import Database
from manager_bot.db.sqlite_driver import InlineConnection


async def test_queries_return_their_rows_counts_and_new_ids(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        async with database.session() as session:
            # executemany: several rows in one statement
            await session.execute(
                insert(User), [{"id": n, "first_name": f"U{n}"} for n in (1, 2, 3)]
            )
            entry = AuditEntry(actor_id=1, action="deploy", outcome="started")
            session.add(entry)
            await session.flush()
            assert entry.id is not None  # the new row's id came back
            changed = await session.execute(
                update(User).where(User.id >= 2).values(username="renamed")
            )
            assert changed.rowcount == 2  # type: ignore[attr-defined]
        async with database.reading() as session:
            names = (await session.execute(select(User.id, User.username).order_by(User.id))).all()
            assert [tuple(row) for row in names] == [(1, None), (2, "renamed"), (3, "renamed")]
            assert (await session.scalars(select(User.id).where(User.id > 9))).all() == []
            stored = await session.get(AuditEntry, entry.id)
            assert stored is not None and stored.action == "deploy"
            # a result fetched in parts (fetchmany) still yields every row, once
            result = await session.execute(text("SELECT id FROM users ORDER BY id"))
            assert result.fetchmany(2) == [(1,), (2,)]
            assert result.fetchall() == [(3,)]
    finally:
        await database.close()


async def test_a_failed_unit_of_work_leaves_nothing_and_the_connection_works_on(
    sqlite_url: str,
) -> None:
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        with pytest.raises(IntegrityError):
            async with database.session() as session:
                await session.execute(insert(User).values(id=5, first_name="Five"))
                await session.execute(insert(User).values(id=5, first_name="Again"))
        with pytest.raises(RuntimeError):
            async with database.session() as session:
                await session.execute(insert(User).values(id=6, first_name="Six"))
                raise RuntimeError("the handler failed after writing")
        async with database.session() as session:  # the one writer connection is fine
            await session.execute(insert(User).values(id=7, first_name="Seven"))
        async with database.reading() as session:
            assert (await session.scalars(select(User.id))).all() == [7]
    finally:
        await database.close()


async def test_a_session_that_only_read_has_nothing_to_commit(sqlite_url: str) -> None:
    """sqlite3 opens a transaction only before a write: reads leave none open (which is
    why the driver may skip their commit and rollback)."""
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        async with database.session() as session:
            await session.execute(select(User.id))
            connection = await session.connection()
            adapted = (await connection.get_raw_connection()).driver_connection
            raw = (await connection.get_raw_connection()).dbapi_connection
            assert isinstance(raw, InlineConnection)
            assert adapted is not None and not adapted._conn.in_transaction
            await session.execute(insert(User).values(id=8, first_name="Eight"))
            assert adapted._conn.in_transaction
        async with database.reading() as session:
            assert await session.get(User, 8) is not None  # the write was committed
    finally:
        await database.close()


async def test_a_write_waiting_for_another_writer_leaves_the_event_loop_free(
    sqlite_url: str,
) -> None:
    """Another process's transaction holds SQLite's write lock. The manager's write waits
    for it, but on aiosqlite's thread: the loop goes on (reads too, as WAL allows), and
    the lock is released from the loop itself, which a write waiting on the loop would
    never let happen. Then the write lands."""
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    other = sqlite3.connect(make_url(sqlite_url).database or "", check_same_thread=False)
    try:
        async with database.session() as session:
            await session.execute(insert(User).values(id=1, first_name="One"))
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another writer holds it
        other.execute("INSERT INTO users (id, first_name, is_banned, blocked_bot, created_at, "
                      "last_seen_at) VALUES (2, 'Two', 0, 0, '2026-01-01', '2026-01-01')")  # fmt: skip

        async def write() -> None:
            async with database.session() as session:
                await session.execute(insert(User).values(id=3, first_name="Three"))

        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the lock (and did not fail at once)
        async with database.reading() as session:  # readers are not held up meanwhile
            assert (await session.scalars(select(User.id))).all() == [1]
        other.commit()
        await asyncio.wait_for(waiting, timeout=20)
        async with database.reading() as session:
            assert (await session.scalars(select(User.id).order_by(User.id))).all() == [1, 2, 3]
        async with database.session() as session:  # statements run on the loop again
            await session.execute(update(User).where(User.id == 3).values(username="three"))
        async with database.reading() as session:
            assert (await session.get(User, 3)).username == "three"  # type: ignore[union-attr]
    finally:
        other.close()
        await database.close()
