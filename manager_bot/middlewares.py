"""Per-update concerns: who the user is (recorded), how fast they may go, and errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, ErrorEvent, Message, TelegramObject, User

from manager_bot import texts
from manager_bot.db.fsm_storage import SqlStorage
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.logs import REQUEST_ID, new_request_id
from manager_bot.recent import Recent
from manager_bot.services.admin import BanList

log = logging.getLogger(__name__)
Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class UserMiddleware(BaseMiddleware):
    """Records (or refreshes) the sender, so agents always have an owner row.

    A user's row is written when first seen, when their name changes, and at most
    every few minutes otherwise: not on every update, which would serialise all
    users on the database's single writer. It is written once the handler is done, so
    the answer does not wait in the database's queue; still inside the user's lock,
    so it is there before their next update (an agent is made in a later one).
    """

    REFRESH_SECONDS = 300.0

    def __init__(self, database: Database) -> None:
        self._db = database
        self._written: Recent[int, tuple[str | None, str, str | None, float]] = Recent()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        try:
            return await handler(event, data)
        finally:
            sender = getattr(event, "from_user", None)
            if sender is not None and not sender.is_bot:
                await self._record(sender)

    async def _record(self, sender: User) -> None:
        now = time.monotonic()
        known = self._written.get(sender.id)
        seen = (sender.username, sender.first_name, sender.language_code)
        fresh = known is not None and known[:3] == seen
        if fresh and now - known[3] <= self.REFRESH_SECONDS:  # type: ignore[index]
            return
        async with self._db.session() as session:
            await Repositories(session).users.upsert(
                user_id=sender.id,
                username=sender.username,
                first_name=sender.first_name,
                telegram_language=sender.language_code,
            )
        self._written[sender.id] = (*seen, now)


class PerUserOrderMiddleware(BaseMiddleware):
    """One user's updates are handled in order (a wizard step must not overtake the
    previous one); different users still run concurrently. asyncio.Lock is FIFO."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        sender = getattr(event, "from_user", None)
        if sender is None:
            return await handler(event, data)
        lock = self._locks.setdefault(sender.id, asyncio.Lock())
        try:
            async with lock:
                # aiogram read the FSM state before this update queued here; the update
                # ahead may have changed it (e.g. /broadcast, then a photo at once).
                state = data.get("state")
                if state is not None:
                    data["raw_state"] = await state.get_state()
                return await handler(event, data)
        finally:
            if not lock.locked() and not lock._waiters:  # nobody queued: forget the lock
                self._locks.pop(sender.id, None)


class FsmWriteBatch(BaseMiddleware):
    """A handler's wizard-state changes reach the database in one write, as it finishes.

    Registered after PerUserOrderMiddleware, so the write lands while the user's lock
    is held: the next update of theirs cannot be written first and then overwritten.
    """

    def __init__(self, storage: SqlStorage) -> None:
        self._storage = storage

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        async with self._storage.batch():
            return await handler(event, data)


class ThrottleMiddleware(BaseMiddleware):
    """At most `limit` updates per user per `window` seconds; the excess gets one polite note."""

    def __init__(self, *, limit: int = 30, window: float = 10.0) -> None:
        self._limit = limit
        self._window = window
        self._seen: Recent[int, deque[float]] = Recent()
        self._warned: Recent[int, float] = Recent()

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        sender = getattr(event, "from_user", None)
        if sender is None:
            return await handler(event, data)
        now = time.monotonic()
        recent = self._seen.get(sender.id)
        if recent is None:
            recent = self._seen[sender.id] = deque()
        while recent and now - recent[0] > self._window:
            recent.popleft()
        if len(recent) >= self._limit:
            if now - self._warned.get(sender.id, 0.0) > self._window:
                self._warned[sender.id] = now
                if isinstance(event, Message):
                    await event.answer(texts.SLOW_DOWN)
                elif isinstance(event, CallbackQuery):
                    await event.answer(texts.SLOW_DOWN, show_alert=True)
            return None
        recent.append(now)
        return await handler(event, data)


class BanMiddleware(BaseMiddleware):
    """Banned users are ignored, politely: one note per user every few minutes."""

    NOTE_EVERY = 600.0

    def __init__(self, bans: BanList) -> None:
        self._bans = bans
        self._noted: dict[int, float] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        sender = getattr(event, "from_user", None)
        if sender is None or sender.id not in self._bans:
            return await handler(event, data)
        if isinstance(event, CallbackQuery):
            await event.answer(texts.YOU_ARE_BANNED, show_alert=True)
            return None
        now = time.monotonic()
        if isinstance(event, Message) and now - self._noted.get(sender.id, -self.NOTE_EVERY) >= (
            self.NOTE_EVERY
        ):
            self._noted[sender.id] = now
            await event.answer(texts.YOU_ARE_BANNED)
        return None


async def on_error(event: ErrorEvent) -> bool:
    """Anything unexpected: a full log line with a reference, a short apology in the chat."""
    # The update's request id: the apology and every log line of the update share it.
    reference = REQUEST_ID.get()
    if reference == "-":
        reference = new_request_id()
    log.error("unhandled error ref=%s", reference, exc_info=event.exception)
    update = event.update
    chat_message = update.message or (
        update.callback_query.message if update.callback_query is not None else None
    )
    if isinstance(chat_message, Message):
        try:
            await chat_message.answer(texts.ERROR.format(reference=reference))
        except Exception:  # the apology itself failed: the log line above is what remains
            log.warning("could not send the apology for ref=%s", reference)
    return True
