"""Every keyboard the manager shows, with typed callback data (always under 64 bytes)."""

from __future__ import annotations

from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    InlineKeyboardMarkup,
    KeyboardButton,
    KeyboardButtonRequestManagedBot,
    ReplyKeyboardMarkup,
)
from aiogram.utils.keyboard import InlineKeyboardBuilder

from manager_bot import texts
from manager_bot.db.models import Agent
from manager_bot.services.providers import Provider


class AgentAction(CallbackData, prefix="ag"):
    action: str
    agent_id: str


class ModelChoice(CallbackData, prefix="md"):
    provider: str
    model: str


class WizardAction(CallbackData, prefix="wz"):
    action: str  # cancel | preset | deploy | edit
    value: int = 0


def choose_bot(*, first_name: str) -> ReplyKeyboardMarkup:
    """Managed Bots first (two taps, no token to copy), the pasted token as fallback."""
    base = "".join(c for c in first_name.lower() if c.isalnum())[:20] or "my"
    request = KeyboardButtonRequestManagedBot(
        request_id=1, suggested_name=f"{first_name[:40]}'s AI", suggested_username=f"{base}_ai_bot"
    )
    return ReplyKeyboardMarkup(
        keyboard=[
            [KeyboardButton(text=texts.CREATE_BOT_BUTTON, request_managed_bot=request)],
            [KeyboardButton(text=texts.HAVE_BOT_BUTTON)],
            [KeyboardButton(text=texts.CANCEL_BUTTON)],
        ],
        resize_keyboard=True,
        one_time_keyboard=True,
    )


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


def presets() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for index, (label, _) in enumerate(texts.PRESETS):
        builder.button(text=label, callback_data=WizardAction(action="preset", value=index))
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(1)
    return builder.as_markup()


def confirm_deploy() -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(text=texts.DEPLOY_BUTTON, callback_data=WizardAction(action="deploy"))
    builder.button(text=texts.EDIT_PROMPT_BUTTON, callback_data=WizardAction(action="edit"))
    builder.button(text=texts.CANCEL_BUTTON, callback_data=WizardAction(action="cancel"))
    builder.adjust(1, 2)
    return builder.as_markup()


def agent_list(agents: list[Agent], *, action: str = "open") -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    for agent in agents:
        builder.button(
            text=texts.agent_button(agent),
            callback_data=AgentAction(action=action, agent_id=agent.id),
        )
    builder.adjust(1)
    return builder.as_markup()


def agent_card(agent: Agent) -> InlineKeyboardMarkup:
    """Buttons that fit the agent's state."""
    builder = InlineKeyboardBuilder()

    def add(label: str, action: str) -> None:
        builder.button(text=label, callback_data=AgentAction(action=action, agent_id=agent.id))

    if agent.desired_state == "stopped":
        add("▶️ Resume", "resume")
    else:
        add("🔄 Restart", "restart")
        add("⏸ Stop", "stop")
    add("📜 Logs", "logs")
    add("✏️ Edit prompt", "prompt")
    add("🧠 Change model", "model")
    if agent.revision > 1:
        add("↩️ Revert", "revert")
    if agent.managed:
        add("🔑 Rotate token", "rotate")
    add(texts.DELETE_BUTTON, "delete")
    add("⬅️ All agents", "list")
    builder.adjust(2)
    return builder.as_markup()


def confirm_delete(agent: Agent) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.YES_DELETE_BUTTON,
        callback_data=AgentAction(action="delete_yes", agent_id=agent.id),
    )
    builder.button(
        text=texts.NO_BUTTON, callback_data=AgentAction(action="open", agent_id=agent.id)
    )
    return builder.as_markup()


def budget_notice(agent: Agent, *, can_raise: bool) -> InlineKeyboardMarkup:
    """Under a budget notice: the card, and for admins a way to raise the limit."""
    builder = InlineKeyboardBuilder()
    builder.button(
        text=texts.OPEN_CARD_BUTTON, callback_data=AgentAction(action="open", agent_id=agent.id)
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

    def add(label: str, action: str) -> None:
        builder.button(text=label, callback_data=AgentAction(action=action, agent_id=agent.id))

    add(texts.LOGS_BUTTON, "logs")
    if gave_up:
        add(texts.RESUME_BUTTON, "resume")
    else:
        add(texts.RESTART_BUTTON, "restart")
        add(texts.MUTE_BUTTON, "mute")
    builder.adjust(3)
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
