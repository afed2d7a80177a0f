"""The deploy wizard's steps: which follow which for the choices made so far, and what
each one shows. Pure (no Telegram calls): `deploy` sends what these return.

One ordered path serves both directions, so "« Back" always lands where "next" came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup

from manager_bot import keyboards, texts
from manager_bot.handlers.model_steps import model_name_question
from manager_bot.keyboards import WizardStep
from manager_bot.services.deployer import MAX_PROMPT_CHARS
from manager_bot.services.providers import Provider, find_provider

WizardData = Mapping[str, Any]


def bot_step(*, first_name: str, can_manage_bots: bool) -> tuple[str, ReplyKeyboardMarkup]:
    """The first step; "Create a new bot" only when Telegram lets the manager create bots."""
    text = texts.CHOOSE_BOT if can_manage_bots else texts.CHOOSE_BOT_PASTE_ONLY
    return text, keyboards.choose_bot(first_name=first_name, can_manage_bots=can_manage_bots)


def _provider(data: WizardData, providers: tuple[Provider, ...]) -> Provider | None:
    return find_provider(providers, str(data.get("provider")))


def path(data: WizardData, providers: tuple[Provider, ...]) -> list[WizardStep]:
    """Every step of this user's wizard, in order, as far as their choices decide it."""
    steps = [WizardStep.BOT] if data.get("managed") else [WizardStep.BOT, WizardStep.TOKEN]
    steps.append(WizardStep.MODEL)
    provider = _provider(data, providers)
    if provider is not None:
        model = str(data.get("model") or "")
        if provider.is_custom:
            steps += [WizardStep.ENDPOINT, WizardStep.MODEL_NAME]
        elif model not in provider.models:  # "Other model…": the id was (or is) typed
            steps.append(WizardStep.MODEL_NAME)
        if provider.is_custom or provider.needs_user_key:
            steps.append(WizardStep.KEY)
    return [*steps, WizardStep.PROMPT, WizardStep.CONFIRM]


def following(step: WizardStep, data: WizardData, providers: tuple[Provider, ...]) -> WizardStep:
    steps = path(data, providers)
    return steps[steps.index(step) + 1]


def previous(step: WizardStep, data: WizardData, providers: tuple[Provider, ...]) -> WizardStep:
    """The step before `step`; the first one when the choices no longer lead to `step`
    (a provider removed from the configuration since)."""
    steps = path(data, providers)
    index = steps.index(step) if step in steps else 0
    return steps[max(index - 1, 0)]


def view(
    step: WizardStep, data: WizardData, providers: tuple[Provider, ...]
) -> tuple[str, InlineKeyboardMarkup]:
    """The text and buttons of any step but the first (whose keyboard is a reply keyboard)."""
    if step is WizardStep.TOKEN:
        return texts.PASTE_TOKEN, keyboards.wizard_step(step)
    if step is WizardStep.MODEL:
        return texts.PICK_MODEL, keyboards.wizard_models(providers)
    if step is WizardStep.PROMPT:
        return texts.ASK_PROMPT.format(limit=MAX_PROMPT_CHARS), keyboards.presets()
    if step is WizardStep.CONFIRM:
        summary = texts.summary(
            username=data["username"], model=data["model"], prompt=data["prompt"]
        )
        return summary, keyboards.confirm_deploy()
    provider = _provider(data, providers)
    assert provider is not None, f"{step} follows the choice of a provider"
    if step is WizardStep.ENDPOINT:
        return texts.ASK_ENDPOINT, keyboards.wizard_step(step)
    if step is WizardStep.MODEL_NAME:
        question = model_name_question(None if provider.is_custom else provider)
        return question, keyboards.wizard_step(step)
    if step is WizardStep.KEY and provider.is_custom:
        return texts.ASK_ENDPOINT_KEY, keyboards.wizard_no_key()
    if step is WizardStep.KEY:
        return texts.PASTE_KEY.format(provider=provider.label), keyboards.wizard_step(step)
    raise ValueError(f"{step} has no inline view")
