"""Which language the manager speaks to whom: the gettext catalogues and the middleware.

The catalogues are the `.po` files under manager_bot/locales, compiled in memory when the
manager starts: a fresh checkout needs no build step, and the image's read-only root FS
is never written to. English is the msgids themselves; a language is a `.po` file.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiogram.types import TelegramObject, User
from aiogram.utils.i18n import I18n, I18nMiddleware
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.recent import Recent

LOCALES_DIR = Path(__file__).parent / "locales"
DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "ru")


def language_for(telegram_code: str | None) -> str:
    """Telegram's `language_code` to ours: Russian for ru*, English for anything else."""
    return "ru" if (telegram_code or "").lower().startswith("ru") else DEFAULT_LANGUAGE


class Catalogues(I18n):
    """aiogram's I18n, reading `.po` files (compiled here) instead of `.mo` files."""

    def __init__(self, path: Path = LOCALES_DIR) -> None:
        super().__init__(path=path, default_locale=DEFAULT_LANGUAGE)

    def find_locales(self) -> dict[str, gettext.GNUTranslations]:
        translations: dict[str, gettext.GNUTranslations] = {}
        for po_path in sorted(self.path.glob(f"*/LC_MESSAGES/{self.domain}.po")):
            with po_path.open("rb") as po_file:
                catalog = read_po(po_file)
            compiled = io.BytesIO()
            write_mo(compiled, catalog)
            compiled.seek(0)
            translations[po_path.parent.parent.name] = gettext.GNUTranslations(compiled)
        return translations


# aiogram gives each subclass of I18n a context variable of its own; `I18n.get_current()`,
# which aiogram's gettext and texts.translate ask, must find this one.
Catalogues._ContextInstanceMixin__context_instance = I18n._ContextInstanceMixin__context_instance  # type: ignore[attr-defined]


class Languages:
    """The language each user reads: the one they picked with /language, else their
    Telegram app's. Kept in memory once read; the database has it across restarts."""

    def __init__(self, *, database: Database, i18n: I18n) -> None:
        self._db = database
        self.i18n = i18n
        self._picked: Recent[int, str | None] = Recent()

    async def picked(self, user_id: int) -> str | None:
        if user_id not in self._picked:
            async with self._db.reading() as session:
                self._picked[user_id] = await Repositories(session).users.language(user_id)
        return self._picked[user_id]

    def forget(self, user_id: int) -> None:
        """Read the user's pick anew next time: another replica may have changed it."""
        self._picked.pop(user_id, None)

    async def pick(self, *, user_id: int, language: str) -> None:
        async with self._db.session() as session:
            await Repositories(session).users.set_language(user_id, language)
        self._picked[user_id] = language

    async def of(self, user_id: int) -> str:
        """For a message sent outside the user's update (alerts, notices, recovery)."""
        async with self._db.reading() as session:
            user = await Repositories(session).users.get(user_id)
            if user is None:
                return DEFAULT_LANGUAGE
            # Read while the session is open: its end expires the row.
            return user.language or language_for(user.telegram_language)

    @contextmanager
    def speaking(self, language: str) -> Iterator[None]:
        """texts.* in `language` inside the block."""
        with self.i18n.context(), self.i18n.use_locale(language):
            yield


@contextmanager
def speaking_to(languages: Languages | None, language: str) -> Iterator[None]:
    """`languages.speaking(language)`, or English when the caller has no Languages."""
    if languages is None:
        yield
        return
    with languages.speaking(language):
        yield


async def language_of(languages: Languages | None, user_id: int | None) -> str:
    """The user's language; English for nobody (the system) or without Languages."""
    if languages is None or user_id is None:
        return DEFAULT_LANGUAGE
    return await languages.of(user_id)


class LanguageMiddleware(I18nMiddleware):
    """Each update in its sender's language (see Languages)."""

    def __init__(self, languages: Languages) -> None:
        super().__init__(i18n=languages.i18n)
        self._languages = languages

    async def get_locale(self, event: TelegramObject, data: dict[str, Any]) -> str:
        sender: User | None = data.get("event_from_user")
        if sender is None:
            return DEFAULT_LANGUAGE
        picked = await self._languages.picked(sender.id)
        return picked or language_for(sender.language_code)
