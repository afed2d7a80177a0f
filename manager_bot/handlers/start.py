"""/start and /help: greet and explain."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from manager_bot import texts

router = Router(name="start")


@router.message(CommandStart())
async def start(message: Message) -> None:
    """Greets a new or returning user."""
    await message.answer(texts.WELCOME)


@router.message(Command("help"))
async def help_(message: Message) -> None:
    """Explains what the bot does."""
    await message.answer(texts.HELP)
