"""/agents and the agent card: run, stop, inspect and edit one's agents from the chat.

Every action goes through the deployer with the caller's user id: an agent id
that is forged, stale or someone else's is "not found", never the agent.
"""

from __future__ import annotations

import contextlib
from html import escape

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import BufferedInputFile, CallbackQuery, Message

from manager_bot import keyboards, texts
from manager_bot.db.models import Agent
from manager_bot.gateway.endpoints import EndpointGuard
from manager_bot.handlers.model_steps import (
    ask_for_details,
    ask_key_if_needed,
    take_endpoint,
    take_model_name,
)
from manager_bot.keyboards import AgentAction, ModelChoice, WizardAction
from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import MAX_PROMPT_CHARS, Deployer
from manager_bot.services.errors import (
    AgentNotFound,
    DeployFailed,
    HatchbotError,
    InvalidAgentConfig,
    InvalidBotToken,
    NoPreviousRevision,
)
from manager_bot.services.llm_keys import KeyCheck, check_key
from manager_bot.services.providers import Provider, find_provider

LOG_LINES = 40
LOG_AS_FILE_ABOVE = 3500


class AgentEdit(StatesGroup):
    prompt = State()
    model = State()
    endpoint = State()
    model_name = State()
    key = State()


async def send_card(
    message: Message, agent: Agent, *, budgets: Budgets | None, edit: bool = False
) -> None:
    """The agent card, with its usage (one read of the database; none just after a deploy,
    where `budgets` is None)."""
    spend = None if budgets is None else (await budgets.spend_of([agent]))[agent.id]
    text, markup = texts.agent_card(agent, spend=spend), keyboards.agent_card(agent)
    if edit:
        try:
            await message.edit_text(text, reply_markup=markup)
            return
        except TelegramBadRequest:
            pass  # unchanged, or too old to edit: send a fresh card
    await message.answer(text, reply_markup=markup)


# -- listing --------------------------------------------------------------------------


async def list_agents(message: Message, deployer: Deployer) -> None:
    assert message.from_user is not None
    agents = await deployer.queries.agents_of(message.from_user.id)
    if not agents:
        await message.answer(texts.NO_AGENTS)
        return
    await message.answer(texts.AGENTS, reply_markup=keyboards.agent_list(agents))


async def back_to_list(query: CallbackQuery, deployer: Deployer) -> None:
    await query.answer()
    agents = await deployer.queries.agents_of(query.from_user.id)
    assert isinstance(query.message, Message)
    if not agents:
        await query.message.edit_text(texts.NO_AGENTS)
        return
    await query.message.edit_text(texts.AGENTS, reply_markup=keyboards.agent_list(agents))


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


# -- commands with an agent name, or a picker --------------------------------------------

COMMAND_ACTIONS = {
    "status": "open",
    "restart": "restart",
    "stop": "stop",
    "resume": "resume",
    "logs": "logs",
    "delete": "delete",
}


async def agent_command(
    message: Message, command: CommandObject, deployer: Deployer, budgets: Budgets, bot: Bot
) -> None:
    """`/restart my_bot` acts at once; `/restart` alone shows a picker."""
    assert message.from_user is not None
    action = COMMAND_ACTIONS[command.command]
    agents = await deployer.queries.agents_of(message.from_user.id)
    if not agents:
        await message.answer(texts.NO_AGENTS)
        return
    wanted = (command.args or "").strip().lstrip("@").lower()
    if not wanted:
        await message.answer(
            texts.PICK_AGENT, reply_markup=keyboards.agent_list(agents, action=action)
        )
        return
    matches = [a for a in agents if wanted in (a.name.lower(), a.bot_username.lower(), a.id)]
    if not matches:
        await message.answer(texts.NOT_FOUND)
        return
    await _perform(
        message, action, matches[0].id, user_id=message.from_user.id, deployer=deployer,
        budgets=budgets, bot=bot,
    )  # fmt: skip


# -- card actions -----------------------------------------------------------------------


async def start_edit(
    query: CallbackQuery, callback_data: AgentAction, state: FSMContext, deployer: Deployer,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
    try:
        agent = await deployer.queries.agent(
            owner_id=query.from_user.id, agent_id=callback_data.agent_id
        )
    except AgentNotFound:
        await query.answer(texts.NOT_FOUND, show_alert=True)
        return
    await query.answer()
    assert isinstance(query.message, Message)
    await state.set_data({"agent_id": agent.id})
    if callback_data.action == "prompt":
        await state.set_state(AgentEdit.prompt)
        await query.message.answer(
            texts.ASK_NEW_PROMPT.format(username=agent.bot_username, limit=MAX_PROMPT_CHARS)
        )
    else:
        await state.set_state(AgentEdit.model)
        await query.message.answer(
            texts.CHOOSE_MODEL_HINT, reply_markup=keyboards.models(providers)
        )


async def card_action(
    query: CallbackQuery, callback_data: AgentAction, deployer: Deployer, budgets: Budgets,
    bot: Bot,
) -> None:  # fmt: skip
    await query.answer()
    assert isinstance(query.message, Message)
    await _perform(
        query.message, callback_data.action, callback_data.agent_id,
        user_id=query.from_user.id, deployer=deployer, budgets=budgets, bot=bot, edit=True,
    )  # fmt: skip


async def _perform(
    message: Message, action: str, agent_id: str, *, user_id: int, deployer: Deployer,
    budgets: Budgets, bot: Bot, edit: bool = False,
) -> None:  # fmt: skip
    """One card action, for buttons and commands alike."""
    try:
        agent = await deployer.queries.agent(owner_id=user_id, agent_id=agent_id)
        if action == "open":
            await send_card(message, agent, budgets=budgets, edit=edit)
        elif action == "restart":
            await deployer.restart(owner_id=user_id, agent_id=agent.id)
            await message.answer(texts.RESTARTED.format(username=agent.bot_username))
        elif action == "stop":
            agent = await deployer.stop(owner_id=user_id, agent_id=agent.id)
            await message.answer(texts.STOPPED.format(username=agent.bot_username))
            await send_card(message, agent, budgets=budgets)
        elif action == "resume":
            agent = await deployer.resume(owner_id=user_id, agent_id=agent.id)
            await message.answer(texts.RESUMED.format(username=agent.bot_username))
            await send_card(message, agent, budgets=budgets)
        elif action == "revert":
            agent = await deployer.revert(owner_id=user_id, agent_id=agent.id)
            await message.answer(texts.REVERTED.format(username=agent.bot_username))
        elif action == "logs":
            await _send_logs(message, agent, user_id=user_id, deployer=deployer)
        elif action == "mute":
            await deployer.mute(owner_id=user_id, agent_id=agent.id, hours=24)
            await message.answer(texts.MUTED.format(username=agent.bot_username))
        elif action == "delete":
            await message.answer(
                texts.CONFIRM_DELETE.format(username=agent.bot_username),
                reply_markup=keyboards.confirm_delete(agent),
            )
        elif action == "delete_yes":
            await deployer.delete(owner_id=user_id, agent_id=agent.id)
            await message.answer(texts.DELETED.format(username=agent.bot_username))
        elif action == "rotate" and agent.managed:
            token = await bot.replace_managed_bot_token(user_id=agent.bot_id)
            await deployer.rotate_token(owner_id=user_id, agent_id=agent.id, new_token=token)
            await message.answer(texts.TOKEN_ROTATED.format(username=agent.bot_username))
        else:
            await message.answer(texts.NOT_FOUND)
    except AgentNotFound:
        await message.answer(texts.NOT_FOUND)
    except NoPreviousRevision:
        await message.answer(texts.NO_PREVIOUS)
    except DeployFailed as failure:
        await message.answer(texts.ACTION_FAILED.format(hint=failure.hint))


async def _send_logs(message: Message, agent: Agent, *, user_id: int, deployer: Deployer) -> None:
    lines = await deployer.queries.logs(owner_id=user_id, agent_id=agent.id, lines=LOG_LINES)
    if not lines.strip():
        await message.answer(texts.NO_LOGS)
    elif len(lines) > LOG_AS_FILE_ABOVE:
        document = BufferedInputFile(lines.encode(), filename=f"{agent.bot_username}.log")
        await message.answer_document(document)
    else:
        await message.answer(f"<pre>{escape(lines)}</pre>")


# -- edits (prompt, model) ----------------------------------------------------------------


async def new_prompt(message: Message, state: FSMContext, deployer: Deployer) -> None:
    assert message.from_user is not None
    prompt = (message.text or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        await message.answer(
            texts.PROMPT_TOO_LONG.format(length=len(prompt), limit=MAX_PROMPT_CHARS)
        )
        return
    agent_id = str((await state.get_data()).get("agent_id"))
    await state.clear()
    try:
        agent = await deployer.change(
            owner_id=message.from_user.id, agent_id=agent_id, system_prompt=prompt
        )
    except AgentNotFound:
        await message.answer(texts.NOT_FOUND)
        return
    except (DeployFailed, InvalidAgentConfig) as error:
        await message.answer(texts.ACTION_FAILED.format(hint=str(error)))
        return
    await message.answer(texts.PROMPT_CHANGED.format(username=agent.bot_username))


async def new_prompt_hint(message: Message) -> None:
    await message.answer(texts.PROMPT_HINT)


async def new_model(
    query: CallbackQuery, callback_data: ModelChoice, state: FSMContext, deployer: Deployer,
    providers: tuple[Provider, ...],
) -> None:  # fmt: skip
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
        await _after_new_model(query.message, state, provider, deployer, query.from_user.id)


async def new_endpoint(message: Message, state: FSMContext, endpoint_guard: EndpointGuard) -> None:
    await take_endpoint(message, state, endpoint_guard, next_state=AgentEdit.model_name)


async def new_model_name(
    message: Message, state: FSMContext, deployer: Deployer, providers: tuple[Provider, ...]
) -> None:
    assert message.from_user is not None
    provider = await take_model_name(message, state, providers)
    if provider is not None:
        await _after_new_model(message, state, provider, deployer, message.from_user.id)


async def _after_new_model(
    message: Message, state: FSMContext, provider: Provider, deployer: Deployer, user_id: int
) -> None:
    if not await ask_key_if_needed(message, state, provider, key_state=AgentEdit.key):
        await _apply_model(message, state, user_id=user_id, deployer=deployer, key=None)


async def new_model_no_key(query: CallbackQuery, state: FSMContext, deployer: Deployer) -> None:
    await query.answer()
    assert isinstance(query.message, Message)
    await _apply_model(
        query.message, state, user_id=query.from_user.id, deployer=deployer, key=None
    )


async def new_model_key(
    message: Message, state: FSMContext, deployer: Deployer, providers: tuple[Provider, ...]
) -> None:
    assert message.from_user is not None
    with contextlib.suppress(TelegramBadRequest):
        await message.delete()  # it carried a key
    data = await state.get_data()
    provider = find_provider(providers, str(data.get("provider")))
    key = (message.text or "").strip()
    if provider is None:
        await state.clear()
        await message.answer(texts.CANCELLED)
        return
    if provider.is_custom:  # only the gateway connects to a user's endpoint
        await _apply_model(message, state, user_id=message.from_user.id, deployer=deployer, key=key)
        return
    verdict = await check_key(provider, key)
    if verdict is not KeyCheck.OK:
        template = texts.KEY_REJECTED if verdict is KeyCheck.REJECTED else texts.KEY_UNREACHABLE
        await message.answer(template.format(provider=provider.label))
        return
    await _apply_model(message, state, user_id=message.from_user.id, deployer=deployer, key=key)


async def _apply_model(
    message: Message, state: FSMContext, *, user_id: int, deployer: Deployer, key: str | None
) -> None:
    data = await state.get_data()
    await state.clear()
    try:
        agent = await deployer.change(
            owner_id=user_id,
            agent_id=str(data.get("agent_id")),
            provider=str(data["provider"]),
            model=str(data["model"]),
            llm_api_key=key,
            llm_base_url=data.get("endpoint"),
        )
    except AgentNotFound:
        await message.answer(texts.NOT_FOUND)
        return
    except (DeployFailed, InvalidAgentConfig, InvalidBotToken, HatchbotError) as error:
        await message.answer(texts.ACTION_FAILED.format(hint=str(error)))
        return
    await message.answer(texts.MODEL_CHANGED.format(username=agent.bot_username, model=agent.model))


async def edit_hint(message: Message) -> None:
    await message.answer(texts.CHOOSE_MODEL_HINT)


async def endpoint_hint(message: Message) -> None:
    await message.answer(texts.ASK_ENDPOINT)


async def model_name_hint(message: Message) -> None:
    await message.answer(texts.MODEL_NAME_HINT)


def build_router() -> Router:
    """A fresh Router (a Router belongs to one Dispatcher; tests and restarts build several)."""
    router = Router(name="agents")
    router.message.register(list_agents, Command("agents"))
    router.message.register(usage, Command("usage"))
    router.callback_query.register(back_to_list, AgentAction.filter(F.action == "list"))
    router.message.register(agent_command, Command(*COMMAND_ACTIONS))
    router.callback_query.register(
        start_edit, AgentAction.filter(F.action.in_({"prompt", "model"}))
    )
    router.callback_query.register(card_action, AgentAction.filter())
    router.message.register(new_prompt, AgentEdit.prompt, F.text, ~F.text.startswith("/"))
    router.message.register(new_prompt_hint, AgentEdit.prompt)
    router.callback_query.register(new_model, AgentEdit.model, ModelChoice.filter())
    router.message.register(new_endpoint, AgentEdit.endpoint, F.text, ~F.text.startswith("/"))
    router.message.register(new_model_name, AgentEdit.model_name, F.text, ~F.text.startswith("/"))
    router.callback_query.register(
        new_model_no_key, AgentEdit.key, WizardAction.filter(F.action == "nokey")
    )
    router.message.register(new_model_key, AgentEdit.key, F.text)
    router.message.register(edit_hint, AgentEdit.model)
    router.message.register(edit_hint, AgentEdit.key)
    router.message.register(endpoint_hint, AgentEdit.endpoint)
    router.message.register(model_name_hint, AgentEdit.model_name)
    return router
