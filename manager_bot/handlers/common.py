"""/cancel from anywhere, and a polite answer to what no other handler understood."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove

from manager_bot import texts
from manager_bot.keyboards import WizardAction

# Included first: /cancel must win over every step's own handlers.
cancel_router = Router(name="cancel")
# Included last: catches what nothing else handled.
fallback_router = Router(name="fallback")


@cancel_router.message(Command("cancel"))
@cancel_router.message(F.text == texts.CANCEL_BUTTON)
async def cancel(message: Message, state: FSMContext) -> None:
    """Leaves any wizard or edit, keeping everything as it was."""
    if await state.get_state() is None:
        await message.answer(texts.NOTHING_TO_CANCEL, reply_markup=ReplyKeyboardRemove())
        return
    await state.clear()
    await message.answer(texts.CANCELLED, reply_markup=ReplyKeyboardRemove())


@cancel_router.callback_query(WizardAction.filter(F.action == "cancel"))
async def cancel_button(query: CallbackQuery, state: FSMContext) -> None:
    await state.clear()
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(texts.CANCELLED)


@fallback_router.callback_query()
async def stale_button(query: CallbackQuery) -> None:
    """An old keyboard, or data nobody should have sent: say so, change nothing."""
    await query.answer(texts.NOT_FOUND, show_alert=True)


@fallback_router.message()
async def unknown(message: Message) -> None:
    await message.answer(texts.UNKNOWN)
