"""The event loop the manager and the gateway run on: uvloop where it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

_T = TypeVar("_T")
EventLoop = Literal["uvloop", "asyncio"]


def run(main: Coroutine[Any, Any, _T], *, loop: EventLoop) -> _T:
    """`asyncio.run(main)`, on uvloop unless `loop` is "asyncio" or uvloop is missing
    (it is not built for Windows: asyncio's own loop serves there).

    Why uvloop: the manager is a loop of small HTTP exchanges (Bot API calls, the
    cluster's API, the database in line), and asyncio's own loop was about a fifth of
    its CPU; on uvloop the manager spent ~7% less CPU per update (bench/manager.py).
    """
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def running_loop_name() -> str:
    """What the running loop is ("uvloop" or "asyncio"), for the start-up log line."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
