"""/language: English or Russian, whatever the user's Telegram app speaks."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from manager_bot import keyboards, texts
from manager_bot.i18n import LANGUAGES, Languages
from manager_bot.keyboards import LanguageChoice


async def choose(message: Message) -> None:
    """Offers the languages."""
    await message.answer(texts.CHOOSE_LANGUAGE, reply_markup=keyboards.languages(LANGUAGES))


async def chosen(query: CallbackQuery, callback_data: LanguageChoice, languages: Languages) -> None:
    """Stores the pick (it outlives restarts) and answers in the new language at once."""
    await languages.pick(user_id=query.from_user.id, language=callback_data.language)
    await query.answer()
    # The update began in the old language: this answer is the first in the new one.
    with languages.speaking(callback_data.language):
        done = texts.LANGUAGE_SET
    if isinstance(query.message, Message):
        await query.message.edit_text(done)


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="language")
    router.message.register(choose, Command("language"))
    router.callback_query.register(chosen, LanguageChoice.filter(F.language.in_(LANGUAGES)))
    return router
