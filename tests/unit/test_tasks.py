"""Ending tasks without swallowing a cancel meant for the caller (runtime/tasks.py)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.tasks import cancel_all, cancel_and_wait, wait_out


async def slow_to_stop(stopping: asyncio.Event) -> None:
    """A task whose cleanup takes a moment after it is cancelled (a flush, a close)."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(0.2)
        raise


async def test_the_caller_goes_on_once_the_task_it_cancelled_has_ended() -> None:
    child = asyncio.create_task(slow_to_stop(asyncio.Event()))
    await asyncio.sleep(0)
    await cancel_and_wait(child)
    assert child.cancelled()


async def test_a_cancel_of_the_caller_while_it_waits_is_not_swallowed() -> None:
    stopping = asyncio.Event()
    went_on: list[bool] = []

    async def caller() -> None:
        child = asyncio.create_task(slow_to_stop(stopping))
        await asyncio.sleep(0)
        await cancel_and_wait(child)
        went_on.append(True)  # with `suppress(CancelledError)` it got here

    task = asyncio.create_task(caller())
    await stopping.wait()  # the caller waits on the child's cleanup now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and went_on == []


async def test_another_error_of_the_task_is_raised() -> None:
    async def failing() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await wait_out(asyncio.create_task(failing()))


async def loses_the_first_cancel(cancels_seen: list[int]) -> None:
    """A loop that lost a cancel (as Python 3.11's wait_for loses it inside redis-py's
    connect, when what it waits for finishes as the cancel arrives) and runs on."""
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancels_seen.append(1)
            if len(cancels_seen) > 1:
                raise


async def wait_for_loses_it(finish_with_the_cancel: list[asyncio.Future[int]]) -> None:
    """The real thing on Python 3.11: wait_for returns the result of a future finished in
    the same turn as the cancel (3.12 raises instead, and this task ends at once)."""
    loop = asyncio.get_running_loop()
    while True:
        future: asyncio.Future[int] = loop.create_future()
        finish_with_the_cancel.append(future)
        await asyncio.wait_for(future, 60)


async def test_a_task_that_lost_its_cancel_is_cancelled_again_until_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancels_seen: list[int] = []
    child = asyncio.create_task(loses_the_first_cancel(cancels_seen))
    await asyncio.sleep(0)
    await cancel_and_wait(child, again_after=0.05)  # without a second cancel: forever
    assert child.cancelled() and len(cancels_seen) == 2
    # The operator learns which task lost it.
    assert "loses_the_first_cancel still runs 0.05 s after its cancel" in caplog.text


async def test_a_cancel_lost_inside_wait_for_does_not_hold_the_caller() -> None:
    futures: list[asyncio.Future[int]] = []
    child = asyncio.create_task(wait_for_loses_it(futures))
    await asyncio.sleep(0)
    futures[-1].set_result(1)  # finishes in the same turn as the cancel below
    await cancel_and_wait(child, again_after=0.05)
    assert child.cancelled()


async def test_cancel_all_ends_every_task_and_absorbs_how_each_ended() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    cancels_seen: list[int] = []
    tasks = [
        asyncio.create_task(loses_the_first_cancel(cancels_seen)),
        asyncio.create_task(fails_when_cancelled()),
        asyncio.create_task(slow_to_stop(asyncio.Event())),
        asyncio.create_task(asyncio.sleep(0, result="done already")),
    ]
    await asyncio.sleep(0.01)
    await cancel_all(tasks, again_after=0.05)
    assert all(task.done() for task in tasks)
    assert [task.cancelled() for task in tasks] == [True, False, True, False]
    assert isinstance(tasks[1].exception(), ValueError)
