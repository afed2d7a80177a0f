"""/start and /help: greet and explain."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from manager_bot import texts


async def start(message: Message) -> None:
    """Greets a new or returning user."""
    await message.answer(texts.WELCOME)


async def help_(message: Message) -> None:
    """Explains what the bot does."""
    await message.answer(texts.HELP)


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="start")
    router.message.register(start, CommandStart())
    router.message.register(help_, Command("help"))
    return router
