"""Filters on what a message is, shared by the conversations (no Router of their own)."""

from __future__ import annotations

from aiogram.filters import Filter
from aiogram.types import Message

from manager_bot.services.secret_shapes import contains_secret


class TypedCommand(Filter):
    """A message that starts with a /command, as Telegram marks it (a bot_command entity
    at offset 0): "/status x" is one, a prompt that merely starts with "/" is not."""

    async def __call__(self, message: Message) -> bool:
        return any(
            entity.type == "bot_command" and entity.offset == 0 for entity in message.entities or ()
        )


class HoldsSecret(Filter):
    """A message whose text or caption holds something shaped like a token or an API key."""

    async def __call__(self, message: Message) -> bool:
        return contains_secret(message.text or message.caption or "")
