"""Ending tasks without swallowing a cancel meant for the caller (runtime/tasks.py)."""

from __future__ import annotations

import asyncio

import pytest

from runtime.tasks import cancel_and_wait, wait_out


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
