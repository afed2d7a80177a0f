"""/agents and the agent card: run, stop, inspect and edit one's agents from the chat
(prompt, model, who may talk to it, a pasted bot's new token, its description).

Every action goes through the deployer with the caller's user id. A button is answered
for the agent as it is now: one about an agent the user no longer has (deleted, forged,
someone else's) shows "out of date" and the list of agents; one from an old card, or
offering what no longer fits (Stop on a stopped agent), shows the current card in its
place and does nothing else. Card screens replace each other in one message per agent
(`views.live_card`); buttons under notifications answer below them instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from aiogram import BaseMiddleware, Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    Message,
    MessageOriginHiddenUser,
    MessageOriginUser,
    TelegramObject,
)

from manager_bot import texts
from manager_bot.config import ManagerSettings
from manager_bot.db.models import Agent
from manager_bot.gateway.endpoints import EndpointGuard
from manager_bot.handlers.message_filters import HoldsSecret
from manager_bot.handlers.model_steps import (
    ask_for_details,
    ask_key_if_needed,
    take_endpoint,
    take_model_name,
)
from manager_bot.keyboards import (
    AgentAction,
    AlertAction,
    CardAction,
    ModelChoice,
    WizardAction,
    agent_list,
    offers,
)
from manager_bot.services.agent_memory import AgentMemory, Forgotten
from manager_bot.services.agent_profile import (
    MAX_DESCRIPTION,
    Access,
    AccessMode,
    one_line,
    utf16_length,
)
from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import MAX_PROMPT_CHARS, Deployer
from manager_bot.services.errors import (
    AgentNotFound,
    HatchbotError,
    InvalidAccess,
    InvalidBotToken,
    TokenOfAnotherBot,
)
from manager_bot.services.llm_keys import KeyCheck, check_key
from manager_bot.services.providers import Provider, find_provider
from manager_bot.services.telegram import AgentTokenError, looks_like_token
from manager_bot.views import card as card_view
from manager_bot.views.card import Screen
from manager_bot.views.errors import refusal
from manager_bot.views.live_card import LiveCards, show, show_on_card

LOG_LINES = 40
EDIT_STARTED = "edit_started"  # FSM data: when the pending edit began (time.time())
# Buttons that only navigate: fine from any card, however old.
NAVIGATION = frozenset({CardAction.OPEN, CardAction.LIST})


class AgentEdit(StatesGroup):
    prompt = State()
    model = State()
    endpoint = State()
    model_name = State()
    key = State()
    access_list = State()  # user ids typed or forwarded messages, until Done
    token = State()  # a pasted bot's new token
    description = State()


# Pending edits whose answer may carry a secret: deleted even when it comes too late.
SECRET_EDITS = frozenset({AgentEdit.key.state, AgentEdit.token.state})
# Buttons that belong to a pending edit instead of leaving it.
EDIT_BUTTONS = frozenset({CardAction.ACCESS_DONE})


# What asked for a card action: a button, or a command (`/stop my_bot`).
Asked = CallbackQuery | Message


@dataclass
class CardPress:
    """A card action about to be done, from a button or a command alike."""

    agent: Agent
    message: Message  # shown in (in_place) or answered below
    in_place: bool
    user_id: int
    deployer: Deployer
    budgets: Budgets
    cards: LiveCards

    async def show(self, screen: Screen) -> Message:
        return await show_on_card(
            self.message, screen, agent_id=self.agent.id, cards=self.cards,
            in_place=self.in_place,
        )  # fmt: skip

    async def show_card(self, agent: Agent | None = None, *, notice: str | None = None) -> None:
        agent = agent or self.agent
        spend = (await self.budgets.spend_of([agent]))[agent.id]
        await self.show(card_view.card(agent, spend=spend, notice=notice))

    async def show_agent_list(self, *, notice: str | None = None) -> None:
        await show_agent_list(
            self.message, notice=notice, user_id=self.user_id, deployer=self.deployer,
            cards=self.cards, in_place=self.in_place,
        )  # fmt: skip

    @contextlib.asynccontextmanager
    async def failures_shown(self) -> AsyncIterator[None]:
        """A failed action says why on the card; an agent deleted meanwhile, the list."""
        try:
            yield
        except AgentNotFound:
            await self.show_agent_list(notice=texts.OUT_OF_DATE)
        except HatchbotError as error:  # e.g. NoPreviousRevision, DeployFailed
            await self.show_card(notice=card_view.failure(error))


async def show_agent_list(
    message: Message, *, notice: str | None, user_id: int, deployer: Deployer, cards: LiveCards,
    in_place: bool,
) -> None:  # fmt: skip
    """The list of agents (in place of a card, which is then nobody's card)."""
    agents = await deployer.queries.agents_of(user_id)
    shown = await show(message, card_view.agent_list(agents, notice=notice), in_place=in_place)
    await cards.release(shown.message_id)


async def press_of(
    query: CallbackQuery, callback_data: AgentAction | AlertAction, *, deployer: Deployer,
    budgets: Budgets, state: FSMContext,
) -> CardPress | None:  # fmt: skip
    """The press of a card (or alert) button if it is current; else what is current is
    shown (the card, or the list) and None returned."""
    message = query.message
    if not isinstance(message, Message):  # too old for Telegram to send along
        await query.answer(texts.OUT_OF_DATE, show_alert=True)
        return None
    in_place = isinstance(callback_data, AgentAction)
    cards = LiveCards(state)
    user_id = query.from_user.id
    try:
        agent = await deployer.queries.agent(owner_id=user_id, agent_id=callback_data.agent_id)
    except AgentNotFound:
        await query.answer(texts.OUT_OF_DATE)
        await show_agent_list(
            message, notice=texts.OUT_OF_DATE, user_id=user_id, deployer=deployer, cards=cards,
            in_place=in_place,
        )  # fmt: skip
        return None
    press = CardPress(
        agent=agent, message=message, in_place=in_place, user_id=user_id, deployer=deployer,
        budgets=budgets, cards=cards,
    )  # fmt: skip
    action = callback_data.action
    old_card = in_place and action not in NAVIGATION and await cards.is_retired(message.message_id)
    if old_card or not offers(agent, action):
        await query.answer(texts.CARD_WAS_OUT_OF_DATE)
        await press.show_card()
        return None
    await query.answer()
    return press


class CardPresses(BaseMiddleware):
    """Gives card and alert button handlers their `press` (or skips them when the button
    is out of date), and shows what failed on the card."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        assert isinstance(event, CallbackQuery)
        press = await press_of(
            event, data["callback_data"], deployer=data["deployer"], budgets=data["budgets"],
            state=data["state"],
        )  # fmt: skip
        if press is None:
            return None
        data["press"] = press
        async with press.failures_shown():
            return await handler(event, data)
        return None  # a failure, shown


# -- listing --------------------------------------------------------------------------


async def list_agents(message: Message, deployer: Deployer) -> None:
    """/agents: the user's agents as buttons."""
    assert message.from_user is not None
    agents = await deployer.queries.agents_of(message.from_user.id)
    screen = card_view.agent_list(agents)
    await message.answer(screen.text, reply_markup=screen.markup)


async def usage(message: Message, deployer: Deployer, budgets: Budgets) -> None:
    """/usage: tokens today and this month, and what is left of today's budget, per agent."""
    assert message.from_user is not None
    agents = await deployer.queries.agents_of(message.from_user.id)
    if not agents:
        await message.answer(texts.USAGE_NONE)
        return
    spends = await budgets.spend_of(agents)
    lines = [
        texts.USAGE_LINE.format(username=a.bot_username, line=texts.spend_line(spends[a.id]))
        for a in agents
    ]
    await message.answer("\n".join([texts.USAGE_HEADER, *lines]))


# -- card actions (one handler each; `press` comes from CardPresses) ----------------------


async def open_card(_asked: Asked, press: CardPress) -> None:
    """The card (from the list, Back, Cancel, or a notification's Open card)."""
    await press.show_card()


async def back_to_list(_asked: Asked, press: CardPress) -> None:
    """⬅️ All agents."""
    await press.show_agent_list()


async def restart(_asked: Asked, press: CardPress) -> None:
    agent = await press.deployer.restart(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show_card(agent, notice=texts.RESTARTED.format(username=agent.bot_username))


async def stop(_asked: Asked, press: CardPress) -> None:
    agent = await press.deployer.stop(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show_card(agent, notice=texts.STOPPED.format(username=agent.bot_username))


async def resume(_asked: Asked, press: CardPress) -> None:
    agent = await press.deployer.resume(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show_card(agent, notice=texts.RESUMED.format(username=agent.bot_username))


async def revert(_asked: Asked, press: CardPress) -> None:
    agent = await press.deployer.revert(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show_card(agent, notice=texts.REVERTED.format(username=agent.bot_username))


async def mute(_asked: Asked, press: CardPress) -> None:
    """🔕 Mute 24h (under a health alert)."""
    agent = await press.deployer.mute(owner_id=press.user_id, agent_id=press.agent.id, hours=24)
    await press.show_card(agent, notice=texts.MUTED.format(username=agent.bot_username))


async def logs(_asked: Asked, press: CardPress) -> None:
    """📜 Logs in the card with a Back button; too long for a message, as a file below
    it (the card stays)."""
    lines = await press.deployer.queries.logs(
        owner_id=press.user_id, agent_id=press.agent.id, lines=LOG_LINES
    )
    screen = card_view.logs(press.agent, lines)
    if screen is not None:
        await press.show(screen)
        return
    name = f"{press.agent.bot_username}.log"
    await press.message.answer_document(
        BufferedInputFile(lines.encode(), filename=name), caption=texts.LOGS_SENT_AS_FILE
    )


async def ask_delete(_asked: Asked, press: CardPress) -> None:
    await press.show(card_view.confirm_delete(press.agent))


async def delete(_asked: Asked, press: CardPress) -> None:
    """Yes, delete: the card turns into the list of the agents that are left."""
    await press.deployer.delete(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show_agent_list(notice=texts.DELETED.format(username=press.agent.bot_username))


async def ask_rotate(_asked: Asked, press: CardPress) -> None:
    await press.show(card_view.confirm_rotate(press.agent))


async def rotate(_asked: Asked, press: CardPress, bot: Bot) -> None:
    """Yes, rotate: Telegram revokes the old token as it hands out the new one."""
    agent = press.agent
    token = await bot.replace_managed_bot_token(user_id=agent.bot_id)
    agent = await press.deployer.rotate_token(
        owner_id=press.user_id, agent_id=agent.id, new_token=token
    )
    await press.show_card(agent, notice=texts.TOKEN_ROTATED.format(username=agent.bot_username))


async def ask_forget(_asked: Asked, press: CardPress) -> None:
    await press.show(card_view.confirm_forget(press.agent))


async def forget(_asked: Asked, press: CardPress, agent_memory: AgentMemory) -> None:
    """Yes, forget: the stored conversations and the running agent's alike."""
    how = await agent_memory.forget_all(owner_id=press.user_id, agent_id=press.agent.id)
    words = (
        texts.MEMORY_FORGOTTEN if how is Forgotten.AT_ONCE else texts.MEMORY_FORGOTTEN_BY_RESTART
    )
    await press.show_card(notice=words.format(username=press.agent.bot_username))


async def _begin_edit(state: FSMContext, edit: State, agent: Agent, **data: Any) -> None:
    """A pending edit of `agent` starts now (CARD_EDIT_TIMEOUT counts from here)."""
    await state.set_state(edit)
    await state.set_data({"agent_id": agent.id, EDIT_STARTED: time.time(), **data})


async def start_prompt_edit(_asked: Asked, press: CardPress, state: FSMContext) -> None:
    """✏️ Edit prompt: the card asks for the new instructions; the next text is them."""
    await press.show(card_view.ask_prompt(press.agent, limit=MAX_PROMPT_CHARS))
    await _begin_edit(state, AgentEdit.prompt, press.agent)


async def start_model_edit(
    _asked: Asked, press: CardPress, state: FSMContext, providers: tuple[Provider, ...]
) -> None:
    """🧠 Change model: the card shows the models."""
    await press.show(card_view.choose_model(press.agent, providers))
    await _begin_edit(state, AgentEdit.model, press.agent)


# -- who can talk to it -------------------------------------------------------------------


async def show_access(_asked: Asked, press: CardPress) -> None:
    """👥 Who can talk to it: the current mode and a button per mode."""
    await press.show(card_view.access(press.agent))


async def _apply_access(press: CardPress, access: Access) -> None:
    """The new access, then the card with a notice; a refused list stays on the access
    screen with the reason (e.g. more users than Telegram lets into a Managed Bot)."""
    try:
        agent = await press.deployer.set_access(
            owner_id=press.user_id, agent_id=press.agent.id, access=access
        )
    except InvalidAccess as error:
        notice = texts.ACCESS_REFUSED.format(reason=refusal(error))
        await press.show(card_view.access(press.agent, notice=notice))
        return
    await press.show_card(agent, notice=card_view.access_changed(agent))


async def access_everyone(_asked: Asked, press: CardPress) -> None:
    await _apply_access(press, Access.everyone())


async def access_owner_only(_asked: Asked, press: CardPress) -> None:
    await _apply_access(press, Access.owner_only())


async def start_access_list(_asked: Asked, press: CardPress, state: FSMContext) -> None:
    """Listed users…: ids typed or messages forwarded are collected until Done."""
    await press.show(card_view.ask_access_list(press.agent))
    await _begin_edit(state, AgentEdit.access_list, press.agent, user_ids=[])


async def access_list_gone(_asked: Asked, press: CardPress) -> None:
    """Done under a list no longer collected (cancelled, or another edit began)."""
    await press.show_card(notice=texts.ACCESS_LIST_GONE)


# -- a pasted bot's new token, and the description ------------------------------------------


async def start_token_replace(_asked: Asked, press: CardPress, state: FSMContext) -> None:
    """🔑 Replace token (pasted bots): the next message is the token, deleted at once."""
    await press.show(card_view.ask_token(press.agent))
    await _begin_edit(state, AgentEdit.token, press.agent)


async def show_description(_asked: Asked, press: CardPress) -> None:
    """📝 Description: what Telegram shows about the bot, and where it comes from."""
    await press.show(card_view.description(press.agent))


async def start_description_edit(_asked: Asked, press: CardPress, state: FSMContext) -> None:
    await press.show(card_view.ask_description(press.agent))
    await _begin_edit(state, AgentEdit.description, press.agent)


async def description_from_prompt(_asked: Asked, press: CardPress) -> None:
    """From the prompt: the owner's words dropped, the prompt's first sentence again."""
    agent = await press.deployer.set_description(
        owner_id=press.user_id, agent_id=press.agent.id, text=None
    )
    await press.show_card(agent, notice=card_view.description_changed(agent))


# -- commands with an agent name, or a picker --------------------------------------------

CardActionHandler = Callable[[Asked, CardPress], Awaitable[None]]
COMMAND_ACTIONS: dict[str, tuple[CardAction, CardActionHandler]] = {
    "status": (CardAction.OPEN, open_card),
    "restart": (CardAction.RESTART, restart),
    "stop": (CardAction.STOP, stop),
    "resume": (CardAction.RESUME, resume),
    "logs": (CardAction.LOGS, logs),
    "delete": (CardAction.DELETE, ask_delete),
}


async def agent_command(
    message: Message, command: CommandObject, deployer: Deployer, budgets: Budgets,
    state: FSMContext,
) -> None:  # fmt: skip
    """`/restart my_bot` acts at once, below the command; `/restart` alone shows a picker."""
    assert message.from_user is not None
    action, perform = COMMAND_ACTIONS[command.command]
    agents = await deployer.queries.agents_of(message.from_user.id)
    if not agents:
        await message.answer(texts.NO_AGENTS)
        return
    wanted = (command.args or "").strip().lstrip("@").lower()
    if not wanted:
        await message.answer(texts.PICK_AGENT, reply_markup=agent_list(agents, action=action))
        return
    matches = [a for a in agents if wanted in (a.name.lower(), a.bot_username.lower(), a.id)]
    if not matches:
        await message.answer(texts.NOT_FOUND)
        return
    press = CardPress(
        agent=matches[0], message=message, in_place=False, user_id=message.from_user.id,
        deployer=deployer, budgets=budgets, cards=LiveCards(state),
    )  # fmt: skip
    if not offers(press.agent, action):  # /resume of a running agent: how it is
        await press.show_card()
        return
    async with press.failures_shown():
        await perform(message, press)


# -- pending edits (prompt, model) ----------------------------------------------------------


def _is_edit(raw_state: str | None) -> bool:
    return raw_state in AgentEdit


def _leaves_edit(data: str | None) -> bool:
    """Whether a button is a card button other than a pending edit's own (Done)."""
    try:
        action = AgentAction.unpack(data or "").action
    except (TypeError, ValueError):
        return False
    return action not in EDIT_BUTTONS


async def leaves_edit_on_command(
    message: Message, state: FSMContext, raw_state: str | None
) -> bool:
    """Router filter: only a pending edit's answers go in (every handler here wants one:
    the others skip the Router in one check instead of one per handler), and a command
    leaves a pending edit and is handled as if none were pending (so /agents lists the
    agents instead of becoming the new prompt)."""
    if not _is_edit(raw_state):
        return False
    forwarded = message.forward_origin is not None  # someone else's words, not a command
    if not forwarded and (message.text or "").startswith("/"):
        await state.clear()
        return False
    return True


async def leaves_edit_on_card_button(
    query: CallbackQuery, state: FSMContext, raw_state: str | None
) -> bool:
    """Router filter: only presses during a pending edit go in (as for messages), and a
    card button (its Back included) leaves the edit."""
    if not _is_edit(raw_state):
        return False
    if _leaves_edit(query.data):
        await state.clear()
        return False
    return True


async def edit_expired(
    _event: TelegramObject, state: FSMContext, settings: ManagerSettings
) -> bool:
    """Filter: the pending edit began longer ago than CARD_EDIT_TIMEOUT."""
    started = (await state.get_data()).get(EDIT_STARTED)
    return isinstance(started, int | float) and time.time() - started > settings.card_edit_timeout


async def expired_edit(message: Message, state: FSMContext, raw_state: str | None) -> None:
    """An answer to an edit that waited too long: nothing changes."""
    await state.clear()
    if raw_state in SECRET_EDITS:
        await delete_quietly(message)  # it may carry a key or token
    await message.answer(texts.EDIT_EXPIRED)


async def expired_button(query: CallbackQuery, state: FSMContext) -> None:
    await state.clear()
    await query.answer(texts.EDIT_EXPIRED, show_alert=True)


async def new_prompt(
    message: Message, state: FSMContext, deployer: Deployer, budgets: Budgets
) -> None:
    """The new instructions: applied, and a fresh card below them."""
    assert message.from_user is not None
    prompt = (message.text or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        await message.answer(
            texts.PROMPT_TOO_LONG.format(length=len(prompt), limit=MAX_PROMPT_CHARS)
        )
        return
    agent_id = str((await state.get_data()).get("agent_id"))
    await state.clear()
    press = await press_for_edit(
        message, agent_id, state=state, deployer=deployer, budgets=budgets, in_place=False
    )
    if press is None:
        return
    async with press.failures_shown():
        agent = await deployer.change(
            owner_id=press.user_id, agent_id=agent_id, system_prompt=prompt
        )
        await press.show_card(
            agent, notice=texts.PROMPT_CHANGED.format(username=agent.bot_username)
        )


async def new_prompt_hint(message: Message) -> None:
    await message.answer(texts.PROMPT_HINT)


async def new_model(
    query: CallbackQuery, callback_data: ModelChoice, state: FSMContext, deployer: Deployer,
    budgets: Budgets, providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    """A model button on the card: applied at once, or its details asked below."""
    provider = find_provider(providers, callback_data.provider)
    if provider is None or (callback_data.model and callback_data.model not in provider.models):
        await query.answer(texts.NOT_FOUND, show_alert=True)
        return
    await query.answer()
    assert isinstance(query.message, Message)
    await state.update_data(provider=provider.name, model=callback_data.model, endpoint=None)
    asked = await ask_for_details(
        query.message, state, provider, callback_data.model,
        endpoint_state=AgentEdit.endpoint, model_name_state=AgentEdit.model_name,
    )  # fmt: skip
    if not asked:
        await _after_new_model(
            query.message, state, provider, deployer=deployer, budgets=budgets,
            user_id=query.from_user.id, in_place=True,
        )  # fmt: skip


async def new_endpoint(message: Message, state: FSMContext, endpoint_guard: EndpointGuard) -> None:
    await take_endpoint(message, state, endpoint_guard, next_state=AgentEdit.model_name)


async def new_model_name(
    message: Message, state: FSMContext, deployer: Deployer, budgets: Budgets,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    assert message.from_user is not None
    provider = await take_model_name(message, state, providers)
    if provider is not None:
        await _after_new_model(
            message, state, provider, deployer=deployer, budgets=budgets,
            user_id=message.from_user.id, in_place=False,
        )  # fmt: skip


async def _after_new_model(
    message: Message, state: FSMContext, provider: Provider, *, deployer: Deployer,
    budgets: Budgets, user_id: int, in_place: bool,
) -> None:  # fmt: skip
    if not await ask_key_if_needed(message, state, provider, key_state=AgentEdit.key):
        await _apply_model(
            message, state, user_id=user_id, deployer=deployer, budgets=budgets, key=None,
            in_place=in_place,
        )  # fmt: skip


async def new_model_no_key(
    query: CallbackQuery, state: FSMContext, deployer: Deployer, budgets: Budgets
) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await _apply_model(
        query.message, state, user_id=query.from_user.id, deployer=deployer, budgets=budgets,
        key=None, in_place=False,
    )  # fmt: skip


async def new_model_key(
    message: Message, state: FSMContext, deployer: Deployer, budgets: Budgets,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    assert message.from_user is not None
    await delete_quietly(message)  # it carried a key
    data = await state.get_data()
    provider = find_provider(providers, str(data.get("provider")))
    key = (message.text or "").strip()
    if provider is None:
        await state.clear()
        await message.answer(texts.CANCELLED)
        return
    if not provider.is_custom:  # only the gateway connects to a user's endpoint
        verdict = await check_key(provider, key)
        if verdict is not KeyCheck.OK:
            template = texts.KEY_REJECTED if verdict is KeyCheck.REJECTED else texts.KEY_UNREACHABLE
            await message.answer(template.format(provider=provider.label))
            return
    await _apply_model(
        message, state, user_id=message.from_user.id, deployer=deployer, budgets=budgets,
        key=key, in_place=False,
    )  # fmt: skip


async def _apply_model(
    message: Message, state: FSMContext, *, user_id: int, deployer: Deployer, budgets: Budgets,
    key: str | None, in_place: bool,
) -> None:  # fmt: skip
    """The chosen model: applied, and the card shows it (in place after a button on it)."""
    data = await state.get_data()
    await state.clear()
    agent_id = str(data.get("agent_id"))
    press = await press_for_edit(
        message, agent_id, state=state, deployer=deployer, budgets=budgets, in_place=in_place
    )
    if press is None:
        return
    async with press.failures_shown():
        agent = await deployer.change(
            owner_id=user_id, agent_id=agent_id, provider=str(data["provider"]),
            model=str(data["model"]), llm_api_key=key, llm_base_url=data.get("endpoint"),
        )  # fmt: skip
        notice = texts.MODEL_CHANGED.format(username=agent.bot_username, model=agent.model)
        await press.show_card(agent, notice=notice)


async def press_for_edit(
    message: Message, agent_id: str, *, state: FSMContext, deployer: Deployer, budgets: Budgets,
    in_place: bool,
) -> CardPress | None:  # fmt: skip
    """The card to show an edit's outcome on; None (and the list shown) if the agent is gone."""
    user_id = state.key.user_id
    cards = LiveCards(state)
    try:
        agent = await deployer.queries.agent(owner_id=user_id, agent_id=agent_id)
    except AgentNotFound:
        await show_agent_list(
            message, notice=texts.OUT_OF_DATE, user_id=user_id, deployer=deployer, cards=cards,
            in_place=in_place,
        )  # fmt: skip
        return None
    return CardPress(
        agent=agent, message=message, in_place=in_place, user_id=user_id, deployer=deployer,
        budgets=budgets, cards=cards,
    )  # fmt: skip


async def delete_quietly(message: Message) -> None:
    """Remove a message that carried a secret; a failure must not keep the secret around."""
    with contextlib.suppress(TelegramBadRequest):
        await message.delete()


async def deleted_secret(message: Message) -> None:
    """A token or key where none was asked for (a description, a list of users)."""
    await delete_quietly(message)
    await message.answer(texts.SECRET_DELETED)


async def listed_by_forward(message: Message, state: FSMContext) -> None:
    """A message forwarded from the person to let in: Telegram names its author, unless
    they hide their account in forwards (then there is no id to take)."""
    origin = message.forward_origin
    if isinstance(origin, MessageOriginUser) and not origin.sender_user.is_bot:
        await _add_listed(message, state, [origin.sender_user.id])
    elif isinstance(origin, MessageOriginHiddenUser):
        name = escape(origin.sender_user_name)
        await message.answer(texts.ACCESS_HIDDEN_USER.format(name=name))
    else:  # a chat, a channel or a bot
        await message.answer(texts.ACCESS_NOT_A_PERSON)


async def listed_by_ids(message: Message, state: FSMContext) -> None:
    """User ids typed: separated by commas, spaces or new lines."""
    try:
        typed = Access.parse_ids(message.text or "")
    except InvalidAccess as error:
        await message.answer(texts.ACCESS_REFUSED.format(reason=refusal(error)))
        return
    await _add_listed(message, state, typed.user_ids)


async def _add_listed(message: Message, state: FSMContext, user_ids: Iterable[int]) -> None:
    """The users added to the list being collected, and the list so far with Done."""
    data = await state.get_data()
    listed = sorted({*data.get("user_ids", []), *user_ids})
    try:
        Access.listed(listed)  # refused now (too many) rather than at Done
    except InvalidAccess as error:
        await message.answer(texts.ACCESS_REFUSED.format(reason=refusal(error)))
        return
    await state.update_data(user_ids=listed)
    screen = card_view.access_list_so_far(str(data.get("agent_id")), listed)
    await message.answer(screen.text, reply_markup=screen.markup)


async def access_list_hint(message: Message) -> None:
    await message.answer(texts.ACCESS_LIST_HINT)


async def listed_done(
    query: CallbackQuery, callback_data: AgentAction, state: FSMContext, deployer: Deployer,
    budgets: Budgets,
) -> None:  # fmt: skip
    """Done: the list collected is applied, and the card shows it in place of the list."""
    data = await state.get_data()
    if callback_data.agent_id != data.get("agent_id") or not isinstance(query.message, Message):
        await query.answer(texts.OUT_OF_DATE)  # Done of another agent's list
        return
    await query.answer()
    await state.clear()
    press = await press_for_edit(
        query.message, callback_data.agent_id, state=state, deployer=deployer, budgets=budgets,
        in_place=True,
    )  # fmt: skip
    if press is None:
        return
    async with press.failures_shown():
        await _apply_access(press, Access(AccessMode.LISTED, tuple(data.get("user_ids", []))))


async def new_token(
    message: Message, state: FSMContext, deployer: Deployer, budgets: Budgets
) -> None:
    """The new token: its message deleted at once (whatever it is), while getMe checks it
    is the agent's own bot; refused, the edit stays pending for another paste."""
    token = (message.text or "").strip()
    if not looks_like_token(token):
        await delete_quietly(message)
        await message.answer(texts.TOKEN_SHAPE)
        return
    agent_id = str((await state.get_data()).get("agent_id"))
    replacing = deployer.replace_token(
        owner_id=state.key.user_id, agent_id=agent_id, new_token=token
    )
    # Both finish before anything is said (as the wizard does with a pasted token).
    deleted, replaced = await asyncio.gather(
        delete_quietly(message), replacing, return_exceptions=True
    )
    if isinstance(deleted, BaseException):
        raise deleted
    if isinstance(replaced, TokenOfAnotherBot):
        await message.answer(
            texts.TOKEN_OF_ANOTHER_BOT.format(given=replaced.given, expected=replaced.expected)
        )
        return
    if isinstance(replaced, InvalidBotToken):
        unreachable = replaced.reason == AgentTokenError.UNREACHABLE
        await message.answer(texts.TOKEN_UNREACHABLE if unreachable else texts.TOKEN_INVALID)
        return
    await state.clear()
    press = await press_for_edit(
        message, agent_id, state=state, deployer=deployer, budgets=budgets, in_place=False
    )
    if press is None:
        return
    async with press.failures_shown():
        if isinstance(replaced, BaseException):
            raise replaced
        notice = texts.TOKEN_REPLACED.format(username=replaced.bot_username)
        await press.show_card(replaced, notice=notice)


async def new_description(
    message: Message, state: FSMContext, deployer: Deployer, budgets: Budgets
) -> None:
    """The owner's one-liner: Telegram shows it on the bot's profile (blank: the prompt's)."""
    text = one_line(message.text or "")
    if utf16_length(text) > MAX_DESCRIPTION:
        await message.answer(
            texts.DESCRIPTION_TOO_LONG.format(length=utf16_length(text), limit=MAX_DESCRIPTION)
        )
        return
    agent_id = str((await state.get_data()).get("agent_id"))
    await state.clear()
    press = await press_for_edit(
        message, agent_id, state=state, deployer=deployer, budgets=budgets, in_place=False
    )
    if press is None:
        return
    async with press.failures_shown():
        agent = await deployer.set_description(owner_id=press.user_id, agent_id=agent_id, text=text)
        await press.show_card(agent, notice=card_view.description_changed(agent))


async def description_hint(message: Message) -> None:
    await message.answer(texts.DESCRIPTION_HINT)


async def edit_hint(message: Message) -> None:
    await message.answer(texts.CHOOSE_MODEL_HINT)


async def endpoint_hint(message: Message) -> None:
    await message.answer(texts.ASK_ENDPOINT)


async def model_name_hint(message: Message) -> None:
    await message.answer(texts.MODEL_NAME_HINT)


# -- routers ----------------------------------------------------------------------------------


def build_edit_router() -> Router:
    """The pending edits' steps. Commands and card buttons leave an edit (router filters),
    and an edit older than CARD_EDIT_TIMEOUT is over when its answer comes."""
    router = Router(name="agent_edits")
    router.message.filter(leaves_edit_on_command)
    router.callback_query.filter(leaves_edit_on_card_button)
    router.message.register(expired_edit, StateFilter(AgentEdit), edit_expired)
    router.callback_query.register(expired_button, AgentEdit.model, edit_expired)
    router.callback_query.register(expired_button, AgentEdit.access_list, edit_expired)
    # No secret is asked for here: one pasted all the same is deleted before anything else.
    secretless = StateFilter(AgentEdit.access_list, AgentEdit.description)
    router.message.register(deleted_secret, secretless, HoldsSecret())
    router.message.register(new_prompt, AgentEdit.prompt, F.text)
    router.message.register(new_prompt_hint, AgentEdit.prompt)
    router.callback_query.register(new_model, AgentEdit.model, ModelChoice.filter())
    router.message.register(new_endpoint, AgentEdit.endpoint, F.text)
    router.message.register(new_model_name, AgentEdit.model_name, F.text)
    router.callback_query.register(
        new_model_no_key, AgentEdit.key, WizardAction.filter(F.action == "nokey")
    )
    router.message.register(new_model_key, AgentEdit.key, F.text)
    router.message.register(edit_hint, AgentEdit.model)
    router.message.register(edit_hint, AgentEdit.key)
    router.message.register(endpoint_hint, AgentEdit.endpoint)
    router.message.register(model_name_hint, AgentEdit.model_name)
    router.message.register(listed_by_forward, AgentEdit.access_list, F.forward_origin)
    router.message.register(listed_by_ids, AgentEdit.access_list, F.text)
    router.message.register(access_list_hint, AgentEdit.access_list)
    router.callback_query.register(
        listed_done, AgentEdit.access_list, AgentAction.filter(F.action == CardAction.ACCESS_DONE)
    )
    router.message.register(new_token, AgentEdit.token)
    router.message.register(new_description, AgentEdit.description, F.text)
    router.message.register(description_hint, AgentEdit.description)
    return router


CARD_HANDLERS: dict[CardAction, Callable[..., Awaitable[None]]] = {
    CardAction.OPEN: open_card,
    CardAction.LIST: back_to_list,
    CardAction.RESTART: restart,
    CardAction.STOP: stop,
    CardAction.RESUME: resume,
    CardAction.REVERT: revert,
    CardAction.MUTE: mute,
    CardAction.LOGS: logs,
    CardAction.PROMPT: start_prompt_edit,
    CardAction.MODEL: start_model_edit,
    CardAction.DELETE: ask_delete,
    CardAction.DELETE_YES: delete,
    CardAction.ROTATE: ask_rotate,
    CardAction.ROTATE_YES: rotate,
    CardAction.FORGET: ask_forget,
    CardAction.FORGET_YES: forget,
    CardAction.ACCESS: show_access,
    CardAction.ACCESS_EVERYONE: access_everyone,
    CardAction.ACCESS_OWNER: access_owner_only,
    CardAction.ACCESS_LISTED: start_access_list,
    CardAction.ACCESS_DONE: access_list_gone,
    CardAction.TOKEN: start_token_replace,
    CardAction.DESCRIPTION: show_description,
    CardAction.DESCRIPTION_EDIT: start_description_edit,
    CardAction.DESCRIPTION_DERIVED: description_from_prompt,
}
ALERT_ACTIONS = (
    CardAction.OPEN,
    CardAction.LOGS,
    CardAction.RESTART,
    CardAction.RESUME,
    CardAction.MUTE,
)


def build_card_router() -> Router:
    """/agents, /usage, the agent commands and the card's buttons."""
    router = Router(name="agent_cards")
    router.message.register(list_agents, Command("agents"))
    router.message.register(usage, Command("usage"))
    router.message.register(agent_command, Command(*COMMAND_ACTIONS))
    router.callback_query.middleware(CardPresses())
    for action, handler in CARD_HANDLERS.items():
        router.callback_query.register(handler, AgentAction.filter(F.action == action))
    for action in ALERT_ACTIONS:
        router.callback_query.register(
            CARD_HANDLERS[action], AlertAction.filter(F.action == action)
        )
    return router


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several):
    the pending edits first, so a command leaves one before it is handled."""
    router = Router(name="agents")
    router.include_routers(build_edit_router(), build_card_router())
    return router
