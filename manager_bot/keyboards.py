"""Every keyboard the manager shows, with typed callback data (always under 64 bytes)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from enum import StrEnum
from typing import TypeVar

from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    KeyboardButtonRequestManagedBot,
    ReplyKeyboardMarkup,
)

from manager_bot import texts
from manager_bot.db.models import Agent

# The same builder, minus aiogram's deep copy of every button on every add (for speed).
from manager_bot.keyboard_builder import RowsBuilder as InlineKeyboardBuilder
from manager_bot.services.agent_profile import AccessMode
from manager_bot.services.providers import Provider

_Markup = TypeVar("_Markup", InlineKeyboardMarkup, ReplyKeyboardMarkup)


def _per_language(build: Callable[..., _Markup]) -> Callable[..., _Markup]:
    """A keyboard that depends only on its (hashable) arguments and the language, built
    once per both and then shared: nothing changes a keyboard once made (aiogram only
    serialises it), and the wizard's were built anew for every step of every user."""
    built: dict[tuple[Hashable, ...], _Markup] = {}

    @functools.wraps(build)
    def shared(*args: Hashable) -> _Markup:
        key = (*args, texts.current_language())
        if key not in built:
            built[key] = build(*args)
        return built[key]

    return shared


class CardAction(StrEnum):
    """What a button about one agent asks for (its value is what the button carries)."""

    OPEN = "open"
    LIST = "list"
    RESTART = "restart"
    STOP = "stop"
    RESUME = "resume"
    REVERT = "revert"
    LOGS = "logs"
    MUTE = "mute"
    PROMPT = "prompt"
    MODEL = "model"
    ROTATE = "rotate"
    ROTATE_YES = "rotate_yes"
    DELETE = "delete"
    DELETE_YES = "delete_yes"
    ACCESS = "access"  # who can talk to it: the screen
    ACCESS_EVERYONE = "acc_all"
    ACCESS_OWNER = "acc_owner"
    ACCESS_LISTED = "acc_list"  # asks for the list
    ACCESS_DONE = "acc_done"  # applies the list collected so far
    TOKEN = "token"  # a pasted bot's new token from BotFather
    DESCRIPTION = "descr"  # the screen
    DESCRIPTION_EDIT = "descr_edit"
    DESCRIPTION_DERIVED = "descr_prompt"
    TOOLS = "tools"  # the agent's MCP servers: the screen
    TOOLS_ADD = "tools_add"  # asks for a server's URL
    TOOLS_NO_TOKEN = "tools_notoken"  # adds the server asked about, without a token
    TOOLS_REMOVE = "tools_rm"  # carried by ToolRemove, with the server's name
    FORGET = "forget"  # forget all conversations: asks first
    FORGET_YES = "forget_yes"


# The access screen's mode buttons.
ACCESS_CHOICES: dict[AccessMode, CardAction] = {
    AccessMode.EVERYONE: CardAction.ACCESS_EVERYONE,
    AccessMode.OWNER: CardAction.ACCESS_OWNER,
    AccessMode.LISTED: CardAction.ACCESS_LISTED,
}


class AgentAction(CallbackData, prefix="ag"):
    """A button of the agent's card, or of a list or picker that turns into the card."""

    action: CardAction
    agent_id: str


class ToolRemove(AgentAction, prefix="tr"):
    """Remove one MCP server of the agent (a card button: it is an AgentAction too)."""

    server: str  # [a-z0-9][a-z0-9-]{0,31}: "tr:tools_rm:<10>:<32>" stays under 64 bytes


class AlertAction(CallbackData, prefix="al"):
    """A button under a notification about an agent: the notification stays as it is."""

    action: CardAction
    agent_id: str


class ModelChoice(CallbackData, prefix="md"):
    provider: str
    model: str


class WizardAction(CallbackData, prefix="wz"):
    action: str  # cancel | preset | deploy | edit
    value: int = 0


class WizardStep(StrEnum):
    """The deploy wizard's steps, in the order a user may meet them."""

    BOT = "bot"
    TOKEN = "token"
    MODEL = "model"
    ENDPOINT = "endpoint"
    MODEL_NAME = "model_name"
    KEY = "key"
    PROMPT = "prompt"
    CONFIRM = "confirm"


class WizardBack(CallbackData, prefix="wb"):
    step: WizardStep  # the step whose message carries the button: an older one is stale


def choose_bot(*, first_name: str, can_manage_bots: bool = True) -> ReplyKeyboardMarkup:
    """Managed Bots first (two taps, no token to copy), the pasted token as fallback;
    only the fallback when the manager bot's Bot Management Mode is off."""
    rows = [
        [KeyboardButton(text=texts.HAVE_BOT_BUTTON)],
        [KeyboardButton(text=texts.CANCEL_BUTTON)],
    ]
    if can_manage_bots:
        base = "".join(c for c in first_name.lower() if c.isalnum())[:20] or "my"
        request = KeyboardButtonRequestManagedBot(
            request_id=1,
            suggested_name=f"{first_name[:40]}'s AI",
            suggested_username=f"{base}_ai_bot",
        )
        rows.insert(0, [KeyboardButton(text=texts.CREATE_BOT_BUTTON, request_managed_bot=request)])
    return ReplyKeyboardMarkup(keyboard=rows, resize_keyboard=True, one_time_keyboard=True)


def _back_and_cancel(step: WizardStep) -> list[InlineKeyboardButton]:
    """The wizard's last row: back to the step before `step`, or out."""
    return [
        InlineKeyboardButton(
            text=texts.WIZARD_BACK_BUTTON, callback_data=WizardBack(step=step).pack()
        ),
        InlineKeyboardButton(
            text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel").pack()
        ),
    ]


def _with_back(markup: InlineKeyboardMarkup, step: WizardStep) -> InlineKeyboardMarkup:
    """`markup` with Back beside its Cancel (shared keyboards end with a lone Cancel)."""
    rows = list(markup.inline_keyboard)
    cancel = WizardAction(action="cancel").pack()
    if rows and [button.callback_data for button in rows[-1]] == [cancel]:
        rows.pop()
    return InlineKeyboardMarkup(inline_keyboard=[*rows, _back_and_cancel(step)])


@_per_language
def wizard_step(step: WizardStep) -> InlineKeyboardMarkup:
    """Under a wizard question answered by typing: Back and Cancel."""
    return InlineKeyboardMarkup(inline_keyboard=[_back_and_cancel(step)])


@_per_language
def wizard_models(providers: tuple[Provider, ...]) -> InlineKeyboardMarkup:
    return _with_back(models(providers), WizardStep.MODEL)


@_per_language
def wizard_no_key() -> InlineKeyboardMarkup:
    return _with_back(no_key(), WizardStep.KEY)


@_per_language
def cancel_only() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    return builder.as_markup()


def models(providers: tuple[Provider, ...]) -> InlineKeyboardMarkup:
    """The catalogue, then "Other model…" per provider and the user's own endpoint (an
    empty model in the callback data means: ask for it)."""
    builder = InlineKeyboardBuilder()
    for provider in providers:
        suffix = " 🔑" if provider.needs_user_key else ""
        for model in provider.models:
            builder.button(
                text=f"{provider.label} · {model}{suffix}",
                callback_data=ModelChoice(provider=provider.name, model=model),
            )
    for provider in providers:
        label = (
            texts.OWN_ENDPOINT_BUTTON
            if provider.is_custom
            else texts.OTHER_MODEL_BUTTON.format(provider=provider.label)
        )
        builder.button(text=label, callback_data=ModelChoice(provider=provider.name, model=""))
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(1)
    return builder.as_markup()


def no_key() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=texts.NO_KEY_BUTTON, callback_data=WizardAction(action="nokey"))
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(1)
    return builder.as_markup()


@_per_language
def presets() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for index, (label, _) in enumerate(texts.PRESETS):
        builder.button(text=label, callback_data=WizardAction(action="preset", value=index))
    builder.adjust(1)
    builder.row(*_back_and_cancel(WizardStep.PROMPT))
    return builder.as_markup()


@_per_language
def confirm_deploy() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=texts.DEPLOY_BUTTON, callback_data=WizardAction(action="deploy"))
    builder.button(text=texts.EDIT_PROMPT_BUTTON, callback_data=WizardAction(action="edit"))
    builder.adjust(1, 1)
    builder.row(*_back_and_cancel(WizardStep.CONFIRM))
    return builder.as_markup()


def agent_list(
    agents: list[Agent], *, action: CardAction = CardAction.OPEN
) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for agent in agents:
        builder.button(
            text=texts.agent_button(agent),
            callback_data=AgentAction(action=action, agent_id=agent.id),
        )
    builder.adjust(1)
    return builder.as_markup()


# What the card offers, in the order its buttons appear; state-dependent ones only when
# the agent's state allows them (see `offers`).
CARD_BUTTONS: tuple[CardAction, ...] = (
    CardAction.RESUME,
    CardAction.RESTART,
    CardAction.STOP,
    CardAction.LOGS,
    CardAction.PROMPT,
    CardAction.MODEL,
    CardAction.REVERT,
    CardAction.ACCESS,
    CardAction.DESCRIPTION,
    CardAction.TOOLS,
    CardAction.ROTATE,
    CardAction.TOKEN,
    CardAction.FORGET,
    CardAction.DELETE,
    CardAction.LIST,
)


def offers(agent: Agent, action: CardAction) -> bool:
    """Whether `action` makes sense for the agent as it is now: a card drawn earlier may
    offer Stop for an agent that has been stopped since."""
    running = agent.desired_state != "stopped"
    if action in (CardAction.RESTART, CardAction.STOP, CardAction.MUTE):
        return running
    if action is CardAction.RESUME:
        return not running
    if action is CardAction.REVERT:
        return agent.revision > 1
    if action in (CardAction.ROTATE, CardAction.ROTATE_YES):
        return bool(agent.managed)
    if action is CardAction.TOKEN:  # a Managed Bot's token is rotated through Telegram
        return not agent.managed
    if action is CardAction.DESCRIPTION_DERIVED:
        return agent.description is not None
    return True


def agent_card(agent: Agent) -> InlineKeyboardMarkup:
    """Buttons that fit the agent's state."""
    builder = InlineKeyboardBuilder()
    for action in CARD_BUTTONS:
        if offers(agent, action):
            builder.button(
                text=texts.CARD_BUTTONS[action],
                callback_data=AgentAction(action=action, agent_id=agent.id),
            )
    builder.adjust(2)
    return builder.as_markup()


def _confirm(agent: Agent, *, yes_label: str, yes: CardAction) -> InlineKeyboardMarkup:
    """Yes, or Cancel back to the card."""
    builder = InlineKeyboardBuilder()
    builder.button(text=yes_label, callback_data=AgentAction(action=yes, agent_id=agent.id))
    builder.button(
        text=texts.CANCEL_BUTTON,
        callback_data=AgentAction(action=CardAction.OPEN, agent_id=agent.id),
    )
    return builder.as_markup()


def confirm_delete(agent: Agent) -> InlineKeyboardMarkup:
    return _confirm(agent, yes_label=texts.YES_DELETE_BUTTON, yes=CardAction.DELETE_YES)


def confirm_rotate(agent: Agent) -> InlineKeyboardMarkup:
    return _confirm(agent, yes_label=texts.YES_ROTATE_BUTTON, yes=CardAction.ROTATE_YES)


def confirm_forget(agent: Agent) -> InlineKeyboardMarkup:
    return _confirm(agent, yes_label=texts.YES_FORGET_BUTTON, yes=CardAction.FORGET_YES)


def back_to_card(agent: Agent) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.BACK_BUTTON,
        callback_data=AgentAction(action=CardAction.OPEN, agent_id=agent.id),
    )
    return builder.as_markup()


def _card_button(
    builder: InlineKeyboardBuilder, agent: Agent, action: CardAction, text: str
) -> None:
    builder.button(text=text, callback_data=AgentAction(action=action, agent_id=agent.id))


def access_modes(agent: Agent, *, current: AccessMode) -> InlineKeyboardMarkup:
    """Who can talk to it: the three modes (the current one ticked), and Back."""
    builder = InlineKeyboardBuilder()
    for mode, action in ACCESS_CHOICES.items():
        text = texts.ACCESS_MODE_BUTTONS[mode]
        _card_button(builder, agent, action, f"✅ {text}" if mode is current else text)
    _card_button(builder, agent, CardAction.OPEN, texts.BACK_BUTTON)
    builder.adjust(1)
    return builder.as_markup()


def access_list_done(agent_id: str) -> InlineKeyboardMarkup:
    """Under the list collected so far: Done applies it."""
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.DONE_BUTTON,
        callback_data=AgentAction(action=CardAction.ACCESS_DONE, agent_id=agent_id),
    )
    return builder.as_markup()


def description(agent: Agent) -> InlineKeyboardMarkup:
    """The description's screen: Edit, From the prompt (when it is the owner's), Back."""
    builder = InlineKeyboardBuilder()
    _card_button(builder, agent, CardAction.DESCRIPTION_EDIT, texts.EDIT_DESCRIPTION_BUTTON)
    if offers(agent, CardAction.DESCRIPTION_DERIVED):
        _card_button(
            builder, agent, CardAction.DESCRIPTION_DERIVED, texts.DERIVED_DESCRIPTION_BUTTON
        )
    _card_button(builder, agent, CardAction.OPEN, texts.BACK_BUTTON)
    builder.adjust(1)
    return builder.as_markup()


def tools(agent: Agent, server_names: list[str], *, can_add: bool) -> InlineKeyboardMarkup:
    """The MCP servers' screen: Remove per server, Add (while there is room), Back."""
    builder = InlineKeyboardBuilder()
    for name in server_names:
        builder.button(
            text=texts.TOOLS_REMOVE_BUTTON.format(name=name),
            callback_data=ToolRemove(
                action=CardAction.TOOLS_REMOVE, agent_id=agent.id, server=name
            ),
        )
    if can_add:
        _card_button(builder, agent, CardAction.TOOLS_ADD, texts.TOOLS_ADD_BUTTON)
    _card_button(builder, agent, CardAction.OPEN, texts.BACK_BUTTON)
    builder.adjust(1)
    return builder.as_markup()


def tools_token(agent_id: str) -> InlineKeyboardMarkup:
    """Under the token question: add the server without one."""
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.TOOLS_NO_TOKEN_BUTTON,
        callback_data=AgentAction(action=CardAction.TOOLS_NO_TOKEN, agent_id=agent_id),
    )
    return builder.as_markup()


def card_models(agent: Agent, providers: tuple[Provider, ...]) -> InlineKeyboardMarkup:
    """The wizard's model buttons, with Back to the card in place of its Cancel."""
    rows = models(providers).inline_keyboard[:-1]
    return InlineKeyboardMarkup(inline_keyboard=[*rows, *back_to_card(agent).inline_keyboard])


def budget_notice(agent: Agent, *, can_raise: bool) -> InlineKeyboardMarkup:
    """Under a budget notice: the card, and for admins a way to raise the limit."""
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.OPEN_CARD_BUTTON,
        callback_data=AlertAction(action=CardAction.OPEN, agent_id=agent.id),
    )
    if can_raise:
        builder.button(
            text=texts.RAISE_LIMIT_BUTTON,
            callback_data=AdminAction(action="budget", value=agent.id),
        )
    builder.adjust(1)
    return builder.as_markup()


def health_alert(agent: Agent, *, gave_up: bool) -> InlineKeyboardMarkup:
    """Buttons under a health notification: what the owner most likely wants next."""
    builder = InlineKeyboardBuilder()

    def add(label: str, action: CardAction) -> None:
        builder.button(text=label, callback_data=AlertAction(action=action, agent_id=agent.id))

    add(texts.LOGS_BUTTON, CardAction.LOGS)
    if gave_up:
        add(texts.RESUME_BUTTON, CardAction.RESUME)
    else:
        add(texts.RESTART_BUTTON, CardAction.RESTART)
        add(texts.MUTE_BUTTON, CardAction.MUTE)
    builder.adjust(3)
    return builder.as_markup()


class LanguageChoice(CallbackData, prefix="lg"):
    language: str


def languages(codes: tuple[str, ...]) -> InlineKeyboardMarkup:
    """/language: one button per language, each named in itself."""
    builder = InlineKeyboardBuilder()
    for code in codes:
        builder.button(text=texts.LANGUAGE_NAMES[code], callback_data=LanguageChoice(language=code))
    builder.adjust(2)
    return builder.as_markup()


class AdminAction(CallbackData, prefix="ad"):
    action: str  # audience | send | users
    value: str = ""


def audiences(sizes: dict[str, int]) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for audience, size in sizes.items():
        builder.button(
            text=f"{texts.AUDIENCE_LABELS[audience]} ({size})",
            callback_data=AdminAction(action="audience", value=audience),
        )
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(1)
    return builder.as_markup()


def confirm_broadcast() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=texts.BROADCAST_SEND_BUTTON, callback_data=AdminAction(action="send"))
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(2)
    return builder.as_markup()


def users_pages(page: int, pages: int) -> InlineKeyboardMarkup | None:
    if pages <= 1:
        return None
    builder = InlineKeyboardBuilder()
    if page > 0:
        builder.button(text="◀️", callback_data=AdminAction(action="users", value=str(page - 1)))
    builder.button(
        text=f"{page + 1}/{pages}", callback_data=AdminAction(action="users", value=str(page))
    )
    if page < pages - 1:
        builder.button(text="▶️", callback_data=AdminAction(action="users", value=str(page + 1)))
    builder.adjust(3)
    return builder.as_markup()
