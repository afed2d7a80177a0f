"""Synchronous filters, made coroutines, still decide what handles an update, on the
event loop's own thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from aiogram import Bot, Dispatcher, F, Router
from aiogram.types import Chat, Message, Update
from aiogram.types import User as TelegramUser

from manager_bot.inline_filters import run_sync_filters_inline


def _update(update_id: int, text: str) -> Update:
    person = TelegramUser(id=7, is_bot=False, first_name="Ann")
    message = Message(
        message_id=update_id, date=datetime.now(UTC), text=text,
        chat=Chat(id=7, type="private"), from_user=person,
    )  # fmt: skip
    return Update(update_id=update_id, message=message)


async def test_sync_filters_route_updates_on_the_event_loop_thread() -> None:
    checked_on: list[threading.Thread] = []
    answered: list[str] = []

    def says_hello(message: Message) -> bool:
        checked_on.append(threading.current_thread())
        return message.text == "hello"

    outer, inner = Router(), Router()
    outer.message.filter(F.chat.type == "private")  # a router-wide magic filter
    outer.include_router(inner)

    @inner.message(says_hello)
    async def hello(message: Message) -> None:
        answered.append(f"hello from {message.from_user.first_name}")  # type: ignore[union-attr]

    @inner.message(F.text.startswith("/"))
    async def command(message: Message) -> None:
        answered.append(f"command {message.text}")

    dispatcher = Dispatcher()
    dispatcher.include_router(outer)
    run_sync_filters_inline(dispatcher)
    bot = Bot("42:" + "a" * 35)
    try:
        for number, text in enumerate(["hello", "bye", "/help"], start=1):
            await dispatcher.feed_update(bot, _update(number, text))
    finally:
        await bot.session.close()

    assert answered == ["hello from Ann", "command /help"]
    assert checked_on == [threading.main_thread()] * 3
