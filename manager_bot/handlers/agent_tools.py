"""🔧 Tools on the agent card: the agent's MCP servers, listed, added and removed.

Adding asks for the server's URL (checked as the wizard checks an own endpoint:
shape, then private addresses refused), then for an optional token, whose message
is deleted at once whatever it holds. Every change re-applies the agent (its pod
learns the servers' names) and the tools screen shows the outcome. Buttons go
through the card's own `CardPresses`, so another user's agent id in forged
callback data is "out of date" like anywhere on the card.
"""

from __future__ import annotations

import time
from typing import Any

from aiogram import F, Router
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message

from manager_bot import keyboards, texts
from manager_bot.gateway.endpoints import EndpointRefused
from manager_bot.handlers.agents import (
    EDIT_STARTED,
    CardPress,
    CardPresses,
    delete_quietly,
    edit_expired,
    press_for_edit,
)
from manager_bot.handlers.message_filters import HoldsSecret
from manager_bot.keyboards import AgentAction, CardAction, ToolRemove
from manager_bot.services.agent_tools import AgentTools, ServerToken, ToolsRefused, parse_token
from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import Deployer
from manager_bot.services.errors import AgentNotFound
from manager_bot.views import tools as tools_view
from manager_bot.views.errors import refusal, tools_refusal


class ToolsEdit(StatesGroup):
    url = State()
    token = State()  # the URL is in the FSM data; the token never is


# -- the screen and its buttons (`press` comes from CardPresses) ---------------------------


async def _show_tools(press: CardPress, agent_tools: AgentTools, *, notice: str | None) -> None:
    servers = await agent_tools.servers(owner_id=press.user_id, agent_id=press.agent.id)
    await press.show(
        tools_view.tools(press.agent, servers, max_servers=agent_tools.max_servers, notice=notice)
    )


async def show_tools(_query: CallbackQuery, press: CardPress, agent_tools: AgentTools) -> None:
    """🔧 Tools: the servers, a Remove button each, Add while there is room."""
    await _show_tools(press, agent_tools, notice=None)


async def start_add(
    _query: CallbackQuery, press: CardPress, state: FSMContext, agent_tools: AgentTools
) -> None:
    """➕ Add MCP server: the card asks for the URL; the next text is it."""
    servers = await agent_tools.servers(owner_id=press.user_id, agent_id=press.agent.id)
    if len(servers) >= agent_tools.max_servers:  # a screen drawn before the last add
        notice = texts.TOOLS_TOO_MANY.format(limit=agent_tools.max_servers)
        await _show_tools(press, agent_tools, notice=notice)
        return
    await press.show(tools_view.ask_url(press.agent))
    await state.set_state(ToolsEdit.url)
    await state.set_data({"agent_id": press.agent.id, EDIT_STARTED: time.time()})


async def remove(
    _query: CallbackQuery, callback_data: ToolRemove, press: CardPress, agent_tools: AgentTools
) -> None:
    """➖ Remove <name>: gone from the agent, which is re-applied without it."""
    try:
        agent = await agent_tools.remove(
            owner_id=press.user_id, agent_id=press.agent.id, name=callback_data.server
        )
    except ToolsRefused as refused:
        await _show_tools(press, agent_tools, notice=tools_refusal(refused))
        return
    press.agent = agent
    notice = texts.TOOLS_REMOVED.format(name=callback_data.server, username=agent.bot_username)
    await _show_tools(press, agent_tools, notice=notice)


async def add_without_token(
    _query: CallbackQuery, press: CardPress, state: FSMContext, agent_tools: AgentTools
) -> None:
    """No token needed: the server asked about is added as it is."""
    data = await state.get_data()
    if data.get("agent_id") != press.agent.id:  # the button of another agent's question
        await _show_tools(press, agent_tools, notice=texts.OUT_OF_DATE)
        return
    await state.clear()
    await _add(press, agent_tools, url=str(data.get("url")), token=None)


async def token_question_gone(
    _query: CallbackQuery, press: CardPress, agent_tools: AgentTools
) -> None:
    """No token needed, under a question no longer pending (cancelled, or expired)."""
    await _show_tools(press, agent_tools, notice=texts.OUT_OF_DATE)


async def _add(
    press: CardPress, agent_tools: AgentTools, *, url: str, token: ServerToken | None
) -> None:
    """Stored and applied; the tools screen says what happened."""
    try:
        agent, name = await agent_tools.add(
            owner_id=press.user_id, agent_id=press.agent.id, url=url, token=token
        )
    except ToolsRefused as refused:  # e.g. the same URL added meanwhile from another card
        await _show_tools(press, agent_tools, notice=tools_refusal(refused))
        return
    except EndpointRefused as refused:
        notice = texts.ENDPOINT_REFUSED.format(reason=refusal(refused))
        await _show_tools(press, agent_tools, notice=notice)
        return
    press.agent = agent
    notice = texts.TOOLS_ADDED.format(username=agent.bot_username, name=name)
    await _show_tools(press, agent_tools, notice=notice)


# -- the answers typed ----------------------------------------------------------------------


async def url_given(message: Message, state: FSMContext, agent_tools: AgentTools) -> None:
    """The server's URL: refused with the reason (the step stays), or the token asked."""
    agent_id = str((await state.get_data()).get("agent_id"))
    try:
        url = await agent_tools.check_url(
            owner_id=state.key.user_id, agent_id=agent_id, text=message.text or ""
        )
    except EndpointRefused as refused:
        await message.answer(texts.ENDPOINT_REFUSED.format(reason=refusal(refused)))
        return
    except ToolsRefused as refused:
        await message.answer(tools_refusal(refused))
        return
    except AgentNotFound:
        await state.clear()
        await message.answer(texts.OUT_OF_DATE)
        return
    # Kept encrypted from now on: a hosted server's URL often holds a secret in its path.
    await delete_quietly(message)
    await state.update_data(url=url)
    await state.set_state(ToolsEdit.token)
    await message.answer(texts.TOOLS_ASK_TOKEN, reply_markup=keyboards.tools_token(agent_id))


async def url_hint(message: Message) -> None:
    await message.answer(texts.TOOLS_URL_HINT)


async def secret_instead_of_url(message: Message) -> None:
    await delete_quietly(message)
    await message.answer(texts.SECRET_DELETED)


async def token_given(
    message: Message, state: FSMContext, agent_tools: AgentTools, deployer: Deployer,
    budgets: Budgets,
) -> None:  # fmt: skip
    """The token: its message deleted first, whatever it is; then the server is added."""
    await delete_quietly(message)
    if not message.text:  # a photo or a file: its caption may hold the token all the same
        await message.answer(texts.TOOLS_TOKEN_DELETED)
        return
    try:
        token = parse_token(message.text)
    except ToolsRefused as refused:
        await message.answer(tools_refusal(refused))
        return
    data = await state.get_data()
    await state.clear()
    press = await press_for_edit(
        message, str(data.get("agent_id")), state=state, deployer=deployer, budgets=budgets,
        in_place=False,
    )  # fmt: skip
    if press is not None:
        async with press.failures_shown():
            await _add(press, agent_tools, url=str(data.get("url")), token=token)


async def expired(message: Message, state: FSMContext, raw_state: str | None) -> None:
    """An answer that came after CARD_EDIT_TIMEOUT: nothing changes."""
    await state.clear()
    if raw_state == ToolsEdit.token.state:
        await delete_quietly(message)  # it may carry a token
    await message.answer(texts.EDIT_EXPIRED)


# -- router ---------------------------------------------------------------------------------


async def leaves_on_command(message: Message, state: FSMContext, raw_state: str | None) -> bool:
    """Router filter: only a pending add's answers go in (every message handler here
    wants one), and a command leaves a pending add and is handled as if none were."""
    if raw_state not in ToolsEdit:
        return False
    forwarded = message.forward_origin is not None
    if not forwarded and (message.text or "").startswith("/"):
        await state.clear()
        return False
    return True


async def leaves_on_button(query: CallbackQuery, state: FSMContext, raw_state: str | None) -> bool:
    """Router filter: any button but "No token needed" leaves a pending add (it is handled
    all the same: Add again starts afresh)."""
    if raw_state in ToolsEdit and not _is_no_token(query.data):
        await state.clear()
    return True


def _is_no_token(data: str | None) -> bool:
    try:
        return AgentAction.unpack(data or "").action is CardAction.TOOLS_NO_TOKEN
    except (TypeError, ValueError):
        return False


def _card(action: CardAction) -> Any:
    return AgentAction.filter(F.action == action)


def build_router() -> Router:
    """A fresh Router; included after the card's pending edits and before the routers
    that take commands, so a command leaves a pending add first."""
    router = Router(name="agent_tools")
    router.message.filter(leaves_on_command)
    router.callback_query.filter(leaves_on_button)
    router.message.register(expired, ToolsEdit.url, edit_expired)
    router.message.register(expired, ToolsEdit.token, edit_expired)
    router.message.register(token_given, ToolsEdit.token)
    router.message.register(secret_instead_of_url, ToolsEdit.url, HoldsSecret())
    router.message.register(url_given, ToolsEdit.url, F.text)
    router.message.register(url_hint, ToolsEdit.url)
    router.callback_query.middleware(CardPresses())
    router.callback_query.register(show_tools, _card(CardAction.TOOLS))
    router.callback_query.register(start_add, _card(CardAction.TOOLS_ADD))
    router.callback_query.register(
        add_without_token, ToolsEdit.token, _card(CardAction.TOOLS_NO_TOKEN)
    )
    router.callback_query.register(token_question_gone, _card(CardAction.TOOLS_NO_TOKEN))
    router.callback_query.register(remove, ToolRemove.filter(F.action == CardAction.TOOLS_REMOVE))
    return router
