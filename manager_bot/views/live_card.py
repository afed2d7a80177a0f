"""The agent's live card: one message per agent and chat in which its screens replace
each other, so the chat does not fill with cards.

Which message is an agent's live card is kept in the FSM storage under a destiny of its
own: /cancel and the wizards clear the user's state, and must not make the manager
forget it. The cards it replaced are remembered too (the last few), so a button pressed
on one of them is known to come from an old card.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from aiogram.exceptions import TelegramBadRequest
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

from manager_bot.db.models import Agent
from manager_bot.services.budgets import Budgets
from manager_bot.views import card as card_view
from manager_bot.views.card import Screen

CARDS_DESTINY = "cards"
RETIRED_KEPT = 30  # old cards remembered per chat; an older one's buttons act as if current


class LiveCards:
    """The live card of each of a user's agents in one chat."""

    def __init__(self, state: FSMContext) -> None:
        self._store = FSMContext(
            storage=state.storage, key=replace(state.key, destiny=CARDS_DESTINY)
        )

    async def is_retired(self, message_id: int) -> bool:
        """Whether the message was an agent's card and another message has taken over."""
        retired = (await self._store.get_data()).get("retired", [])
        return message_id in retired

    async def move(self, agent_id: str, message_id: int) -> int | None:
        """The message is the agent's live card now; the one it replaces, if any."""
        data = await self._store.get_data()
        live = {a: m for a, m in data.get("live", {}).items() if m != message_id}
        retired = [m for m in data.get("retired", []) if m != message_id]
        previous = live.get(agent_id)
        live[agent_id] = message_id
        if previous is not None:
            retired = [*retired, previous][-RETIRED_KEPT:]
        await self._store.set_data({"live": live, "retired": retired})
        return previous

    async def release(self, message_id: int) -> None:
        """The message shows something else now (the list of agents): nobody's card."""
        data = await self._store.get_data()
        live = {a: m for a, m in data.get("live", {}).items() if m != message_id}
        retired = [m for m in data.get("retired", []) if m != message_id]
        await self._store.set_data({"live": live, "retired": retired})


async def show(message: Message, screen: Screen, *, in_place: bool) -> Message:
    """`screen` in `message` (edited) or in a new message below it; the message that
    shows it. A message too old to edit, or gone, gets a new one instead."""
    if in_place:
        try:
            edited = await message.edit_text(screen.text, reply_markup=screen.markup)
        except TelegramBadRequest as error:
            if "not modified" in error.message:  # a second tap on the same screen
                return message
        else:
            return edited if isinstance(edited, Message) else message
    return await message.answer(screen.text, reply_markup=screen.markup)


async def show_on_card(
    message: Message, screen: Screen, *, agent_id: str, cards: LiveCards, in_place: bool
) -> Message:
    """A screen of the agent's card; the message that shows it becomes the live card and
    the previous live card loses its buttons (one live card per agent)."""
    shown = await show(message, screen, in_place=in_place)
    previous = await cards.move(agent_id, shown.message_id)
    if previous is not None and previous != shown.message_id and shown.bot is not None:
        with contextlib.suppress(TelegramBadRequest):  # already without buttons, or gone
            await shown.bot.edit_message_reply_markup(
                chat_id=shown.chat.id, message_id=previous, reply_markup=None
            )
    return shown


async def send_card(
    message: Message, agent: Agent, *, budgets: Budgets | None, edit: bool = False
) -> None:
    """The agent card, with its usage (one read of the database; none just after a
    deploy, where `budgets` is None), for callers without the user's FSM context."""
    spend = None if budgets is None else (await budgets.spend_of([agent]))[agent.id]
    await show(message, card_view.card(agent, spend=spend), in_place=edit)
