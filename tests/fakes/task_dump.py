"""Near a test's timeout, print what every asyncio task of its event loop awaits.

pytest-timeout's dump shows the loop idle in `select` and nothing of the coroutines;
a hang is found by which task waits on what (this found the sweeper that lost its
cancel: runtime/tasks.py). Printed to stderr: the failed test's report, and so CI's
log, holds it.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator

import pytest

MARGIN_SECONDS = 5.0  # before pytest-timeout fails the test (and the loop is gone)


def _print_tasks(loop: asyncio.AbstractEventLoop, test: str) -> None:
    out = sys.__stderr__
    if out is None:
        return
    tasks = asyncio.all_tasks(loop)
    print(f"\n=== {test}: {len(tasks)} asyncio tasks, near the timeout ===", file=out)
    for task in tasks:
        task.print_stack(limit=20, file=out)
    out.flush()


def _dump(test: str) -> None:
    # The loop belongs to pytest-asyncio; it is found, not passed: it runs on the main
    # thread, and call_soon_threadsafe is the one safe way in from this timer's thread.
    for thing in gc.get_objects():
        if isinstance(thing, asyncio.AbstractEventLoop) and thing.is_running():
            thing.call_soon_threadsafe(_print_tasks, thing, test)


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    timeout = _timeout(item)
    timer = None
    if timeout > MARGIN_SECONDS:
        timer = threading.Timer(timeout - MARGIN_SECONDS, _dump, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        return (yield)
    finally:
        if timer is not None:
            timer.cancel()
