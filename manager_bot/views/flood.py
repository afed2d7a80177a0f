"""Saying what must reach the user through Telegram's flood control."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiogram.exceptions import TelegramRetryAfter

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 3
LONGEST_WAIT_S = 60  # a longer wait is Telegram refusing for now: the caller's error path


async def despite_flood_control(say: Callable[[], Awaitable[T]]) -> T:
    """`say()`, and again after the wait Telegram asks for when it answers 429. For what
    the user must be told, such as a deploy's outcome: a fast deploy says a lot in one
    chat at once, and a refusal there used to turn "is live" into an apology."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await say()
        except TelegramRetryAfter as error:
            if attempt == ATTEMPTS or error.retry_after > LONGEST_WAIT_S:
                raise
            log.info("flood control: saying it again in %ss", error.retry_after)
            await asyncio.sleep(error.retry_after)
    raise AssertionError("unreachable")  # the loop returns or raises
