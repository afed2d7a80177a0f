"""GroupCommit: writes that arrive during a commit go together in the next one."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from manager_bot.db.group_commit import GroupCommit


class Store:
    """A commit that stores rows, can be held mid-way, and fails once for a key."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.commits: list[dict[str, int]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.failing: tuple[str, Exception] | None = None  # (key, error)
        self.after_commit: Callable[[], None] = lambda: None
        self.waiting: list[bool] = []

    async def commit(self, rows: Mapping[str, int]) -> None:
        self.started.set()
        await self.hold.wait()
        if self.failing is not None and self.failing[0] in rows:
            error, self.failing = self.failing[1], None
            raise error
        self.commits.append(dict(rows))
        self.rows.update(rows)
        self.after_commit()


async def held_first(store: Store, group: GroupCommit[str, int]) -> asyncio.Task[None]:
    """A first write whose commit is under way (and held there)."""
    store.hold.clear()
    first = asyncio.create_task(group.write({"alice": 1}))
    await store.started.wait()
    return first


async def under_way() -> tuple[Store, GroupCommit[str, int], asyncio.Task[None]]:
    """A store, its group commit, and a first write held mid-commit."""
    store = Store()
    group = GroupCommit(store.commit)
    return store, group, await held_first(store, group)


async def test_a_write_alone_is_committed_at_once() -> None:
    store = Store()
    group = GroupCommit(store.commit)
    await group.write({"alice": 1})
    assert store.commits == [{"alice": 1}]


async def test_writes_made_during_a_commit_share_the_next_one() -> None:
    store, group, first = await under_way()
    others = [
        asyncio.create_task(group.write(rows))
        for rows in ({"bob": 1}, {"carol": 1}, {"bob": 2})  # bob's later value wins
    ]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in [first, *others])  # nothing stored yet
    store.hold.set()
    await asyncio.gather(first, *others)
    assert store.commits == [{"alice": 1}, {"bob": 2, "carol": 1}]
    assert store.rows == {"alice": 1, "bob": 2, "carol": 1}


async def test_a_writer_returns_only_once_its_own_rows_are_committed() -> None:
    store, group, first = await under_way()
    second = asyncio.create_task(group.write({"bob": 1}))
    store.after_commit = lambda: store.waiting.append(second.done())
    store.hold.set()
    await asyncio.gather(first, second)
    assert store.commits == [{"alice": 1}, {"bob": 1}]
    assert store.waiting == [False, False]  # still waiting when each commit ended


async def test_a_failed_commit_fails_each_of_its_writers_and_not_the_next_group() -> None:
    store = Store()
    group = GroupCommit(store.commit)
    store.failing = ("alice", OSError("disk I/O error"))
    first = await held_first(store, group)
    later = [asyncio.create_task(group.write({name: 1})) for name in ("bob", "carol")]
    await asyncio.sleep(0)
    store.hold.set()
    with pytest.raises(OSError, match="disk I/O error"):
        await first
    await asyncio.gather(*later)
    assert store.rows == {"bob": 1, "carol": 1}

    store.started.clear()
    store.failing = ("carol", OSError("database is locked"))
    first = await held_first(store, group)
    together = [asyncio.create_task(group.write({name: 2})) for name in ("bob", "carol")]
    await asyncio.sleep(0)
    store.hold.set()
    await first
    outcomes = await asyncio.gather(*together, return_exceptions=True)
    assert [str(outcome) for outcome in outcomes] == ["database is locked"] * 2
    assert store.rows == {"alice": 1, "bob": 1, "carol": 1}


async def test_a_writer_cancelled_while_waiting_still_has_its_rows_written() -> None:
    store, group, first = await under_way()
    impatient = asyncio.create_task(group.write({"bob": 1}))
    await asyncio.sleep(0)
    impatient.cancel()
    store.hold.set()
    await first
    await group.drained()
    assert impatient.cancelled()
    assert store.rows == {"alice": 1, "bob": 1}


async def test_an_error_nobody_waits_for_any_more_is_not_logged_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        store = Store()
        group = GroupCommit(store.commit)
        store.hold.clear()
        store.failing = ("alice", OSError("disk I/O error"))
        writer = asyncio.create_task(group.write({"alice": 1}))
        await store.started.wait()
        writer.cancel()
        store.hold.set()
        await group.drained()
        del writer
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
        assert store.rows == {}
    finally:
        loop.set_exception_handler(None)


async def test_drained_waits_for_rows_still_on_their_way() -> None:
    store, group, first = await under_way()
    first.cancel()  # nobody waits for these rows any more
    drained = asyncio.create_task(group.drained())
    await asyncio.sleep(0.01)
    assert not drained.done()
    store.hold.set()
    await drained
    assert store.rows == {"alice": 1}
