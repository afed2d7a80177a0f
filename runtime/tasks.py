"""Ending asyncio tasks without swallowing a cancel meant for the caller.

`with suppress(CancelledError): await task` also swallows a cancel of the task that
awaits, which then runs on as if nothing happened (a shutdown waits on it, a drain
overruns). Python 3.11's `Task.cancelling()` tells the two apart.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_out(task: asyncio.Future[Any]) -> None:
    """Waits until `task` ends. Its own cancellation ends the wait quietly; a cancel of
    the caller, even one that arrives meanwhile, goes on; any other error is raised."""
    try:
        await task
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancels `task` and waits until it has ended (see `wait_out`)."""
    task.cancel()
    await wait_out(task)
