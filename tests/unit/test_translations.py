"""The catalogues are complete: every text the manager says is in them, and Russian has
each one, with the same placeholders and HTML tags."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from manager_bot.i18n import LANGUAGES, LOCALES_DIR, Catalogues, language_for

PACKAGE = Path(__file__).resolve().parents[2] / "manager_bot"


def catalogue(language: str) -> dict[str, str]:
    with (LOCALES_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as po_file:
        return {str(m.id): str(m.string) for m in read_po(po_file) if m.id}


def extracted() -> set[str]:
    """What `pybabel extract` finds in the package: every `_("...")`."""
    return {str(found[2]) for found in extract_from_dir(str(PACKAGE), keywords={"_": None})}


def placeholders(text: str) -> list[str]:
    return sorted(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)


def tags(text: str) -> list[str]:
    return sorted(re.findall(r"</?[a-z]+>", text))


def test_every_text_of_the_package_is_in_the_catalogues() -> None:
    found = extracted()
    for language in LANGUAGES:
        missing = found - set(catalogue(language))
        assert not missing, f"pybabel extract/update (README: Languages): {sorted(missing)}"


TRANSLATED = [language for language in LANGUAGES if language != "en"]  # en: the msgids


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_text_has_a_translation(language: str) -> None:
    untranslated = [msgid for msgid, msgstr in catalogue(language).items() if not msgstr.strip()]
    assert not untranslated


@pytest.mark.parametrize("language", TRANSLATED)
def test_translations_keep_placeholders_and_tags(language: str) -> None:
    for msgid, msgstr in catalogue(language).items():
        assert placeholders(msgstr) == placeholders(msgid), msgid
        assert tags(msgstr) == tags(msgid), msgid


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [word for item in value for word in strings(item)]
    return []


def test_texts_constants_are_all_marked_for_translation() -> None:
    """A constant in texts.py written without _() would never be translated."""
    from manager_bot import texts

    known = set(catalogue("ru"))
    for name in dir(texts):
        if not name.isupper() or name == "LANGUAGE_NAMES":
            continue
        for word in strings(vars(texts)[name]):  # the msgids, as the module holds them
            if any(c.isalpha() for c in word):
                assert word in known, f"texts.{name}: {word!r}"


def test_the_catalogues_load_and_translate() -> None:
    from manager_bot import texts

    i18n = Catalogues()
    assert set(LANGUAGES) <= set(i18n.locales)
    assert texts.CANCEL_BUTTON == "✖️ Cancel"  # outside an update: English
    with i18n.context(), i18n.use_locale("ru"):
        assert texts.CANCEL_BUTTON == "✖️ Отмена"
        assert texts.CARD_BUTTONS["stop"] == "⏸ Остановить"
        assert texts.DEPLOYED.format(username="x_bot").startswith("🎉 @x_bot работает")
    with i18n.context(), i18n.use_locale("en"):
        assert texts.CANCEL_BUTTON == "✖️ Cancel"


@pytest.mark.parametrize(
    ("telegram_code", "language"),
    [("ru", "ru"), ("ru-RU", "ru"), ("en", "en"), ("uk", "en"), (None, "en"), ("", "en")],
)
def test_the_language_follows_telegrams(telegram_code: str | None, language: str) -> None:
    assert language_for(telegram_code) == language
