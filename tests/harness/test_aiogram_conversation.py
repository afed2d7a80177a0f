"""The harness end to end: aiogram polls the fake server through a 3-step inline conversation."""

from __future__ import annotations

import asyncio
import contextlib

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import Command
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from tests.fakes.telegram_api import FakeTelegram


class Order(StatesGroup):
    size = State()
    colour = State()
    confirm = State()


class Pick(CallbackData, prefix="pick"):
    value: str


def keyboard(*values: str) -> InlineKeyboardBuilder:
    builder = InlineKeyboardBuilder()
    for value in values:
        builder.button(text=value.title(), callback_data=Pick(value=value))
    return builder


def order_router() -> Router:
    router = Router()

    @router.message(Command("order"))
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Order.size)
        await message.answer("Size?", reply_markup=keyboard("small", "large").as_markup())

    @router.callback_query(Order.size, Pick.filter())
    async def size(query: CallbackQuery, callback_data: Pick, state: FSMContext) -> None:
        await state.update_data(size=callback_data.value)
        await state.set_state(Order.colour)
        assert isinstance(query.message, Message)
        await query.message.edit_text("Colour?", reply_markup=keyboard("red", "blue").as_markup())
        await query.answer()

    @router.callback_query(Order.colour, Pick.filter())
    async def colour(query: CallbackQuery, callback_data: Pick, state: FSMContext) -> None:
        data = await state.update_data(colour=callback_data.value)
        await state.set_state(Order.confirm)
        assert isinstance(query.message, Message)
        await query.message.edit_text(
            f"A {data['size']} {data['colour']} one?", reply_markup=keyboard("yes").as_markup()
        )
        await query.answer()

    @router.callback_query(Order.confirm, Pick.filter(F.value == "yes"))
    async def confirm(query: CallbackQuery, state: FSMContext) -> None:
        data = await state.get_data()
        await state.clear()
        assert isinstance(query.message, Message)
        await query.message.edit_text(f"Ordered: {data['size']} {data['colour']}")
        await query.answer("Done!")

    return router


async def test_three_step_inline_conversation(telegram: FakeTelegram) -> None:
    fake = telegram.add_bot(username="shop_bot")
    bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
    dispatcher = Dispatcher()
    dispatcher.include_router(order_router())
    polling = asyncio.create_task(
        dispatcher.start_polling(bot, polling_timeout=1, handle_signals=False)
    )
    try:
        user = telegram.user(fake)
        await user.send("/order")
        await user.wait_for(text_contains="Size?")
        await user.press("Large")
        await user.wait_for(text_contains="Colour?")
        await user.press("Blue")
        await user.wait_for(text_contains="A large blue one?")
        await user.press("Yes")
        done = await user.wait_for(text_contains="Ordered")
        assert done["text"] == "Ordered: large blue"
        assert "reply_markup" not in done
        assert len(user.messages()) == 1  # one message, edited in place
        assert (await user.wait_for_answer(text_contains="Done!"))["text"] == "Done!"
    finally:
        await dispatcher.stop_polling()
        with contextlib.suppress(asyncio.CancelledError):
            await polling
        await bot.session.close()
