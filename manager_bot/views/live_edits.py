"""One message kept showing the newest state of something in progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message

log = logging.getLogger(__name__)

# Telegram asks for about one message a second in a chat (edits count): a state that
# would be on screen for less than that is replaced by the newer one before it is sent.
PACE_SECONDS = 1.0


class LiveEdits:
    """Edits one message to the newest text, one edit in flight at a time.

    Texts that arrive while an edit is in flight, or less than PACE_SECONDS after
    the last one, replace each other and only the newest is sent: the others would
    have been on screen for less than Telegram's pace. The first text goes at once
    (the user sees that it started), and `settled` sends the newest at once (the end
    is never held back). So a quick deploy costs two edits, a slow one shows each step
    within a second of it; states never show out of order, and whoever reports
    progress never waits on Telegram. A failed edit is skipped (the next text catches
    up): progress is a nicety, and what follows it is said after `settled`.
    """

    def __init__(self, message: Message) -> None:
        self._message = message
        self._newest: str | None = None
        self._sending: asyncio.Task[None] | None = None
        self._last_sent: float | None = None  # loop time of the last edit's start
        self._hurry = asyncio.Event()  # set by `settled`: no more pacing

    def show(self, text: str) -> None:
        self._newest = text
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send())

    async def settled(self) -> None:
        """Returns once the newest text is on screen or given up: call it before saying
        anything that must come after the progress (the result, a failure)."""
        self._hurry.set()
        if self._sending is not None:
            await asyncio.shield(self._sending)

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while self._newest is not None:
            if self._last_sent is not None and not self._hurry.is_set():
                wait = self._last_sent + PACE_SECONDS - loop.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._hurry.wait()
            text, self._newest = self._newest, None
            self._last_sent = loop.time()
            try:
                await self._message.edit_text(text)
            except TelegramAPIError as error:  # a 429, a network error: the next catches up
                log.info("progress edit skipped: %s", type(error).__name__)
            except Exception:  # never lost in a task nobody awaits
                log.exception("progress edit failed")
