"""What the manager says reaches the user through Telegram's flood control.

Telegram answers 429 with the seconds to wait when a bot says too much at once (about
one message a second in a chat, thirty a second in all). A reply refused that way used
to end in the handler's error path: the user got an apology, or nothing, instead of
the answer. `FloodControlRetry`, a request middleware of the manager's bot, waits the
time Telegram asks for and makes the call again, a few times at most; the handler just
takes longer, and the user's later updates wait their turn behind it
(PerUserOrderMiddleware), so nothing is answered out of order.

Broadcasts, the notice outbox and start-up pace themselves on a 429 (they pause every
send, hold the outbox, or retry the step): their calls run `paced_by_caller()` and see
the 429 at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import GetUpdates
from aiogram.methods.base import Response, TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import TelegramMethod

log = logging.getLogger(__name__)

ATTEMPTS = 3
LONGEST_WAIT_S = 60  # a longer wait is Telegram refusing for now: the caller's error path

_PACED_BY_CALLER: ContextVar[bool] = ContextVar("paced_by_caller", default=False)


@contextmanager
def paced_by_caller() -> Iterator[None]:
    """Calls made inside (and in tasks started inside) get a 429 at once: for callers
    that pace themselves on it."""
    token = _PACED_BY_CALLER.set(True)
    try:
        yield
    finally:
        _PACED_BY_CALLER.reset(token)


class FloodControlRetry(BaseRequestMiddleware):
    """On a 429, waits the `retry_after` Telegram gives and calls again: ATTEMPTS calls
    in all, and none after a wait longer than LONGEST_WAIT_S (then the 429 is raised)."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        # getUpdates: the polling loop has its own back-off.
        if _PACED_BY_CALLER.get() or isinstance(method, GetUpdates):
            return await make_request(bot, method)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                if attempt == ATTEMPTS or error.retry_after > LONGEST_WAIT_S:
                    raise
                log.info("flood control: %s again in %ss", method.__api_method__, error.retry_after)
                await asyncio.sleep(error.retry_after)
        raise AssertionError("unreachable")  # the loop returns or raises
