"""Synchronous aiogram filters run on the event loop, not on a worker thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiogram import Router
from aiogram.dispatcher.event.handler import FilterObject


def run_sync_filters_inline(router: Router) -> None:
    """Make every synchronous filter of `router` and its sub-routers a coroutine.

    aiogram calls a filter that is not a coroutine function through asyncio.to_thread,
    for callbacks that might block. Ours never do: they are FSM states and magic
    filters (`F.text`, `Action.filter(...)`), lookups on the update that take
    microseconds, while each trip to a thread and back took far more CPU than the
    check itself: about 24 trips per wizard update, measured with bench/manager.py.
    Call it once every router is included; filters added later keep aiogram's way.
    """
    for filter_object in _filters(router):
        if not filter_object.awaitable:
            filter_object.callback = _on_the_loop(filter_object.callback)
            filter_object.awaitable = True  # `params` still come from the original


def _filters(router: Router) -> Iterator[FilterObject]:
    for each in router.chain_tail:
        for observer in each.observers.values():
            yield from observer._handler.filters or ()  # the router-wide filters
            for handler in observer.handlers:
                yield from handler.filters or ()


def _on_the_loop(check: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return check(*args, **kwargs)

    return call
