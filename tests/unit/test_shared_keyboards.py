"""Wizard keyboards are built once per arguments and language, then shared."""

from __future__ import annotations

from pydantic import SecretStr

from manager_bot import keyboards, texts
from manager_bot.config import PlatformSettings
from manager_bot.i18n import Catalogues
from manager_bot.keyboards import WizardStep
from manager_bot.services.providers import available_providers


def labels(markup: keyboards.InlineKeyboardMarkup) -> list[str]:
    return [button.text for row in markup.inline_keyboard for button in row]


def test_a_wizard_keyboard_is_shared_per_language_and_equals_a_fresh_one() -> None:
    providers = available_providers(PlatformSettings(openai_api_key=SecretStr("sk-" + "k" * 24)))
    catalogues = Catalogues()
    shown: dict[str, keyboards.InlineKeyboardMarkup] = {}
    for language in ("en", "ru"):
        with catalogues.context(), catalogues.use_locale(language):
            shown[language] = keyboards.wizard_models(providers)
            assert keyboards.wizard_models(providers) is shown[language]  # built once
            fresh = keyboards.wizard_models.__wrapped__(providers)  # type: ignore[attr-defined]
            assert shown[language].model_dump() == fresh.model_dump()
            assert texts.CANCEL_BUTTON in labels(shown[language])
            step = keyboards.wizard_step(WizardStep.TOKEN)
            assert keyboards.wizard_step(WizardStep.KEY) is not step  # other arguments
    assert shown["en"] is not shown["ru"]
    assert labels(shown["en"]) != labels(shown["ru"])  # each in its own language
