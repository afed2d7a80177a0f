"""Ending asyncio tasks without swallowing a cancel meant for the caller, and without
waiting forever on a task that swallowed the one meant for it.

`with suppress(CancelledError): await task` also swallows a cancel of the task that
awaits, which then runs on as if nothing happened (a shutdown waits on it, a drain
overruns). Python 3.11's `Task.cancelling()` tells the two apart.

The other way round: a task can lose the cancel sent to it. Python 3.11's
`asyncio.wait_for` returns the result when what it waits for finishes at the moment
the cancel arrives, and libraries call it: redis-py 8.1 lost about one cancel in four
of a task looping over SMEMBERS on fresh connections (measured), and a replica's
shutdown then waited on its inbox's sweeper forever. So a task still running
RECANCEL_SECONDS after its cancel is cancelled again, until it ends. (Our own code
bounds its waits with `asyncio.timeout()`, which does not lose a cancel.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Final

# Long enough for a task's own clean-up on cancel (ours shield their database writes),
# short enough that a lost cancel costs a shutdown seconds, not its grace period.
RECANCEL_SECONDS: Final = 5.0

log = logging.getLogger(__name__)


async def wait_out(task: asyncio.Future[Any]) -> None:
    """Waits until `task` ends. Its own cancellation ends the wait quietly; a cancel of
    the caller, even one that arrives meanwhile, goes on; any other error is raised."""
    try:
        await task
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if caller is not None and caller.cancelling():
            raise


async def cancel_and_wait(
    task: asyncio.Future[Any], *, again_after: float = RECANCEL_SECONDS
) -> None:
    """Cancels `task` and waits until it has ended (see `wait_out`), cancelling it again
    every `again_after` seconds while it runs on."""
    task.cancel()
    await _until_ended([task], again_after)
    await wait_out(task)


async def cancel_all(
    tasks: Iterable[asyncio.Future[Any]], *, again_after: float = RECANCEL_SECONDS
) -> None:
    """Cancels every task and waits until all have ended, as `cancel_and_wait` does; how
    each ended (a result, an error, its cancellation) is absorbed, as
    `gather(return_exceptions=True)` would. A cancel of the caller goes on."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await _until_ended(pending, again_after)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio does not log it as never retrieved


async def _until_ended(tasks: list[asyncio.Future[Any]], again_after: float) -> None:
    running = {task for task in tasks if not task.done()}
    while running:
        _, running = await asyncio.wait(running, timeout=again_after)
        for task in running:
            log.warning(
                "%s still runs %g s after its cancel: cancelled again", _name(task), again_after
            )
            task.cancel()  # the cancel before was lost


def _name(future: asyncio.Future[Any]) -> str:
    coroutine = future.get_coro() if isinstance(future, asyncio.Task) else None
    return getattr(coroutine, "__qualname__", None) or "a task"
