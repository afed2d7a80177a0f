"""The agent card's screens: what each says and which buttons it has.

Pure functions of the agent (its usage, its log lines): handlers decide which screen to
show, `views.live_card` shows it in the agent's card message.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from aiogram.types import InlineKeyboardMarkup

from manager_bot import keyboards, texts
from manager_bot.db.models import Agent
from manager_bot.services.agent_profile import MAX_DESCRIPTION, Access, access_of, profile_of
from manager_bot.services.budgets import Spend
from manager_bot.services.errors import HatchbotError
from manager_bot.services.providers import Provider
from manager_bot.views.errors import said

MAX_TEXT = 4096  # Telegram's limit on a message's text, counted after entities are parsed


@dataclass(frozen=True)
class Screen:
    text: str
    markup: InlineKeyboardMarkup | None = None


def card(agent: Agent, *, spend: Spend | None = None, notice: str | None = None) -> Screen:
    """The card; `notice` (what just happened) above it."""
    body = texts.agent_card(agent, spend=spend)
    return Screen(body if notice is None else f"{notice}\n\n{body}", keyboards.agent_card(agent))


def logs(agent: Agent, lines: str) -> Screen | None:
    """The log lines in the card, or None when they do not fit one message."""
    header = texts.LOGS_HEADER.format(username=agent.bot_username)
    back = keyboards.back_to_card(agent)
    if not lines.strip():
        return Screen(f"{header}\n{texts.NO_LOGS}", back)
    if _visible_length(header) + 1 + _visible_length(lines) > MAX_TEXT:
        return None
    return Screen(f"{header}\n<pre>{escape(lines)}</pre>", back)


def ask_prompt(agent: Agent, *, limit: int) -> Screen:
    text = texts.ASK_NEW_PROMPT.format(username=agent.bot_username, limit=limit)
    return Screen(text, keyboards.back_to_card(agent))


def choose_model(agent: Agent, providers: tuple[Provider, ...]) -> Screen:
    text = texts.CHOOSE_NEW_MODEL.format(username=agent.bot_username)
    return Screen(text, keyboards.card_models(agent, providers))


def confirm_delete(agent: Agent) -> Screen:
    text = texts.CONFIRM_DELETE.format(username=agent.bot_username)
    return Screen(text, keyboards.confirm_delete(agent))


def confirm_rotate(agent: Agent) -> Screen:
    text = texts.CONFIRM_ROTATE.format(username=agent.bot_username)
    return Screen(text, keyboards.confirm_rotate(agent))


def confirm_forget(agent: Agent) -> Screen:
    text = texts.CONFIRM_FORGET.format(username=agent.bot_username)
    return Screen(text, keyboards.confirm_forget(agent))


def access(agent: Agent, *, notice: str | None = None) -> Screen:
    """Who can talk to it, with a button per mode; `notice` (what went wrong) above."""
    current = access_of(agent)
    text = texts.ACCESS_SCREEN.format(username=agent.bot_username, who=who_may_talk(current))
    markup = keyboards.access_modes(agent, current=current.mode)
    return Screen(text if notice is None else f"{notice}\n\n{text}", markup)


def who_may_talk(access: Access) -> str:
    ids = ", ".join(map(str, access.user_ids))
    return texts.ACCESS_WHO[access.mode].format(ids=ids)


def ask_access_list(agent: Agent) -> Screen:
    return Screen(
        texts.ASK_ACCESS_LIST.format(username=agent.bot_username), keyboards.back_to_card(agent)
    )


def access_list_so_far(agent_id: str, user_ids: list[int]) -> Screen:
    """The list collected so far, below the owner's message, with Done."""
    ids = ", ".join(map(str, user_ids))
    return Screen(texts.ACCESS_LIST_SO_FAR.format(ids=ids), keyboards.access_list_done(agent_id))


def access_changed(agent: Agent) -> str:
    """The notice after a new access mode (a Managed Bot's Telegram side may follow)."""
    access = access_of(agent)
    return texts.ACCESS_CHANGED[access.mode].format(
        username=agent.bot_username, count=len(access.others_than(agent.owner_id))
    )


def ask_token(agent: Agent) -> Screen:
    return Screen(
        texts.ASK_NEW_TOKEN.format(username=agent.bot_username), keyboards.back_to_card(agent)
    )


def description(agent: Agent) -> Screen:
    """The description as Telegram shows it, and where it comes from."""
    source = (
        texts.DESCRIPTION_DERIVED_SOURCE
        if agent.description is None
        else texts.DESCRIPTION_OWN_SOURCE
    )
    text = texts.DESCRIPTION_SCREEN.format(
        username=agent.bot_username, source=source, text=escape(profile_of(agent).description)
    )
    return Screen(text, keyboards.description(agent))


def ask_description(agent: Agent) -> Screen:
    text = texts.ASK_DESCRIPTION.format(username=agent.bot_username, limit=MAX_DESCRIPTION)
    return Screen(text, keyboards.back_to_card(agent))


def description_changed(agent: Agent) -> str:
    """The notice after a new description; Telegram may not have it yet (reconcile sets it)."""
    template = texts.DESCRIPTION_CHANGED if agent.description else texts.DESCRIPTION_FROM_PROMPT
    notice = template.format(username=agent.bot_username)
    return notice if agent.profile_synced else notice + texts.PROFILE_PENDING


def agent_list(agents: list[Agent], *, notice: str | None = None) -> Screen:
    """/agents: the user's agents as buttons (or how to make one); `notice` above."""
    screen = (
        Screen(texts.AGENTS, keyboards.agent_list(agents)) if agents else Screen(texts.NO_AGENTS)
    )
    if notice is None:
        return screen
    return Screen(f"{notice}\n\n{screen.text}", screen.markup)


def failure(error: HatchbotError) -> str:
    """What a failed card action tells the user (in plain words: views/errors.py)."""
    return said(error)


def _visible_length(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2
