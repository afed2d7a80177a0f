"""SQLite sessions on the event loop (manager_bot/db/inline_session.py) behave as
SQLAlchemy's AsyncSession: rows, counts, ids, errors, commits and rollbacks, through the
manager's Database on a real SQLite file. A write holds the write lock from its start,
and one that must wait for another process's lock waits without holding up the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from manager_bot.db.migrate import upgrade
from manager_bot.db.models import AuditEntry, User
from manager_bot.db.session import Database


@pytest.fixture
async def database(sqlite_url: str) -> AsyncIterator[Database]:
    """The manager's Database on a migrated SQLite file."""
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    yield database
    await database.close()


@pytest.fixture
def other(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """Another program's connection to the same file (timeout 0: refused at once)."""
    connection = sqlite3.connect(
        make_url(sqlite_url).database or "", timeout=0, check_same_thread=False
    )
    yield connection
    connection.close()


async def test_queries_return_their_rows_counts_and_new_ids(database: Database) -> None:
    async with database.session() as session:
        # executemany: several rows in one statement
        await session.execute(insert(User), [{"id": n, "first_name": f"U{n}"} for n in (1, 2, 3)])
        entry = AuditEntry(actor_id=1, action="deploy", outcome="started")
        session.add(entry)
        await session.flush()
        assert entry.id is not None  # the new row's id came back
        changed = await session.execute(update(User).where(User.id >= 2).values(username="renamed"))
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


async def test_a_failed_unit_of_work_leaves_nothing_and_the_connection_works_on(
    database: Database,
) -> None:
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


async def test_a_write_session_holds_the_write_lock_from_its_start_and_a_read_does_not(
    database: Database,
    other: sqlite3.Connection,
) -> None:
    """BEGIN IMMEDIATE: what a write session checks before it writes (a quota, a throttle)
    holds until it commits, against another process too, which sqlite3's own deferred
    BEGIN (taken at the first write) did not promise."""
    async with database.reading() as session:
        await session.execute(select(User.id))
        other.execute("BEGIN IMMEDIATE")  # a reader leaves the write lock free
        other.rollback()
    async with database.session() as session:
        await session.execute(select(User.id))  # only read so far
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        await session.execute(insert(User).values(id=8, first_name="Eight"))
    other.execute("BEGIN IMMEDIATE")  # released by the commit
    other.rollback()
    async with database.reading() as session:
        assert await session.get(User, 8) is not None  # the write was committed


async def test_a_write_that_waits_too_long_for_the_lock_fails_and_leaves_nothing(
    database: Database,
    other: sqlite3.Connection,
) -> None:
    database.lock_wait_seconds = 0.3
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(OperationalError, match="database is locked"):
        async with database.session() as session:
            await session.execute(insert(User).values(id=9, first_name="Nine"))
    other.rollback()
    async with database.session() as session:  # the writer connection works on
        await session.execute(insert(User).values(id=10, first_name="Ten"))
    async with database.reading() as session:
        assert (await session.scalars(select(User.id))).all() == [10]


async def test_a_write_session_inside_another_fails_at_once_instead_of_waiting_for_ever(
    database: Database,
) -> None:
    with pytest.raises(RuntimeError, match="wait for itself"):
        async with database.session() as outer:
            await outer.execute(insert(User).values(id=11, first_name="Eleven"))
            async with database.session():
                pass
    async with database.session() as session:

        async def beside() -> None:  # another task may wait its turn, and gets it
            async with database.session() as other:
                await other.execute(insert(User).values(id=12, first_name="Twelve"))

        waiting = asyncio.create_task(beside())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await session.execute(insert(User).values(id=13, first_name="Thirteen"))
    await asyncio.wait_for(waiting, timeout=10)
    async with database.reading() as session:
        assert (await session.scalars(select(User.id).order_by(User.id))).all() == [12, 13]


async def test_a_write_waiting_for_another_writer_leaves_the_event_loop_free(
    database: Database,
    other: sqlite3.Connection,
) -> None:
    """Another process's transaction holds SQLite's write lock. The manager's write waits
    for it, but asleep between tries: the loop goes on (reads too, as WAL allows), and
    the lock is released from the loop itself, which a write waiting on the loop would
    never let happen. Then the write lands."""
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
    async with database.session() as session:  # and the writer works on
        await session.execute(update(User).where(User.id == 3).values(username="three"))
    async with database.reading() as session:
        assert (await session.get(User, 3)).username == "three"  # type: ignore[union-attr]


async def test_a_read_refused_while_another_process_holds_the_file_waits_and_then_reads(
    database: Database,
    other: sqlite3.Connection,
) -> None:
    other.execute("PRAGMA locking_mode=EXCLUSIVE")  # held until it closes
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO users (id, first_name, is_banned, blocked_bot, created_at, "
                  "last_seen_at) VALUES (2, 'Two', 0, 0, '2026-01-01', '2026-01-01')")  # fmt: skip
    other.commit()

    async def read() -> list[int]:
        async with database.reading() as session:
            return list((await session.scalars(select(User.id))).all())

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    assert not reading.done()  # refused (SQLITE_BUSY), and trying again
    other.close()
    assert await asyncio.wait_for(reading, timeout=10) == [2]


async def test_a_session_that_can_never_get_the_writer_fails_instead_of_hanging(
    database: Database,
) -> None:
    """A task holding the writer and waiting for another task that asks for it: the
    second gives up after the connection wait (the old pool's timeout) with an error
    the first can see, and the writer works on."""
    database.connection_wait_seconds = 0.3

    async def inner() -> None:
        async with database.session() as session:
            await session.execute(insert(User).values(id=21, first_name="Never"))

    with pytest.raises(TimeoutError, match=r"no database connection free after 0\.3 s"):
        async with database.session() as outer:
            await outer.execute(insert(User).values(id=20, first_name="Outer"))
            await asyncio.wait_for(asyncio.create_task(inner()), timeout=10)
    async with database.session() as session:
        await session.execute(insert(User).values(id=22, first_name="After"))
    async with database.reading() as session:
        assert (await session.scalars(select(User.id))).all() == [22]
