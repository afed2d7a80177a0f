"""One message kept showing the newest state of something in progress."""

from __future__ import annotations

import asyncio
import logging

from aiogram.exceptions import TelegramAPIError
from aiogram.types import Message

log = logging.getLogger(__name__)


class LiveEdits:
    """Edits one message to the newest text, one edit in flight at a time.

    Texts that arrive while an edit is in flight replace each other and only the
    newest is sent once it lands: the others would have been on screen for less than
    a round trip. Under load, or against Telegram's limit on edits, that spares calls
    without ever showing states out of order; and whoever reports progress never
    waits on Telegram. A failed edit is skipped (the next text catches up): progress
    is a nicety, and what follows it is said after `settled`.
    """

    def __init__(self, message: Message) -> None:
        self._message = message
        self._newest: str | None = None
        self._sending: asyncio.Task[None] | None = None

    def show(self, text: str) -> None:
        self._newest = text
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send())

    async def settled(self) -> None:
        """Returns once the newest text is on screen or given up: call it before saying
        anything that must come after the progress (the result, a failure)."""
        if self._sending is not None:
            await asyncio.shield(self._sending)

    async def _send(self) -> None:
        while self._newest is not None:
            text, self._newest = self._newest, None
            try:
                await self._message.edit_text(text)
            except TelegramAPIError as error:  # a 429, a network error: the next catches up
                log.info("progress edit skipped: %s", type(error).__name__)
            except Exception:  # never lost in a task nobody awaits
                log.exception("progress edit failed")
