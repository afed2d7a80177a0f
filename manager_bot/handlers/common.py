"""/cancel from anywhere, and a polite answer to what no other handler understood."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove

from manager_bot import texts
from manager_bot.keyboards import WizardAction

# Included first: /cancel must win over every step's own handlers.
# Included last: catches what nothing else handled.


async def cancel(message: Message, state: FSMContext) -> None:
    """Leaves any wizard or edit, keeping everything as it was."""
    if await state.get_state() is None:
        await message.answer(texts.NOTHING_TO_CANCEL, reply_markup=ReplyKeyboardRemove())
        return
    await state.clear()
    await message.answer(texts.CANCELLED, reply_markup=ReplyKeyboardRemove())


async def cancel_button(query: CallbackQuery, state: FSMContext) -> None:
    await state.clear()
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(texts.CANCELLED)


async def stale_button(query: CallbackQuery) -> None:
    """An old keyboard, or data nobody should have sent: say so, change nothing."""
    await query.answer(texts.NOT_FOUND, show_alert=True)


async def unknown(message: Message) -> None:
    await message.answer(texts.UNKNOWN)


def build_cancel_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    cancel_router = Router(name="cancel")
    cancel_router.message.register(cancel, Command("cancel"))
    cancel_router.message.register(cancel, F.text == texts.lazy(texts.CANCEL_BUTTON))
    cancel_router.callback_query.register(cancel_button, WizardAction.filter(F.action == "cancel"))
    return cancel_router


def build_fallback_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    fallback_router = Router(name="fallback")
    fallback_router.callback_query.register(stale_button)
    fallback_router.message.register(unknown)
    return fallback_router
