"""RowsBuilder lays out and sends the same keyboard as aiogram's InlineKeyboardBuilder."""

from __future__ import annotations

from aiogram.utils.keyboard import InlineKeyboardBuilder

from manager_bot.keyboard_builder import RowsBuilder
from manager_bot.keyboards import WizardAction


def _build(builder: InlineKeyboardBuilder) -> dict[str, object]:
    for number in range(7):
        builder.button(text=f"Button {number}", callback_data=f"b:{number}")
    builder.adjust(2, 3)
    builder.row(*RowsBuilder().button(text="« Back", callback_data="back").buttons)
    builder.button(text="Docs", url="https://example.org/docs")
    return builder.as_markup().model_dump(exclude_none=True)


def test_the_same_rows_buttons_and_callbacks_as_aiogram_builds() -> None:
    assert _build(RowsBuilder()) == _build(InlineKeyboardBuilder())


def test_a_markup_does_not_change_when_its_builder_goes_on() -> None:
    builder = RowsBuilder()
    builder.button(text="One", callback_data=WizardAction(action="cancel"))
    first = builder.as_markup()
    builder.button(text="Two", callback_data="two")
    builder.adjust(1)
    assert [[button.text for button in row] for row in first.inline_keyboard] == [["One"]]
    assert [[b.text for b in row] for row in builder.as_markup().inline_keyboard] == [
        ["One"],
        ["Two"],
    ]
