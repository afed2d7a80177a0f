"""What an owner controls besides prompt and model: who may talk to the agent, and how
its bot presents itself (commands, description). Pure values and functions; the
deployer stores them and applies them.

Access reaches the agent twice for a Managed Bot: Telegram's own access settings
(the manager's token, at most 10 users besides the owner) and the runtime's
`ALLOWED_USER_IDS`; a pasted bot has only the runtime's. The owner is always let
in, as Telegram does for Managed Bots: an owner who cannot try their own agent
is a support ticket.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from manager_bot.db.models import Agent
from manager_bot.services.errors import (
    AccessProblem,
    ConfigProblem,
    InvalidAccess,
    InvalidAgentConfig,
)
from runtime.commands import COMMANDS

MAX_LISTED_USERS = 50
MAX_MANAGED_LISTED_USERS = 10  # setManagedBotAccessSettings: "up to 10" besides the owner
# Telegram's limits: setMyDescription 0-512 characters, setMyShortDescription 0-120.
MAX_DESCRIPTION = 512
MAX_SHORT_DESCRIPTION = 120
# Telegram user ids are positive and fit in 52 bits (the Bot API's own promise).
MAX_USER_ID = 2**52
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s")


class AccessMode(enum.StrEnum):
    EVERYONE = "everyone"
    OWNER = "owner"
    LISTED = "listed"


@dataclass(frozen=True)
class Access:
    """Who may talk to an agent. `user_ids` only for LISTED: sorted, unique, 1-50 ids
    (the owner may be among them or not: the owner is always let in)."""

    mode: AccessMode = AccessMode.EVERYONE
    user_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.mode is not AccessMode.LISTED:
            if self.user_ids:
                raise InvalidAccess(AccessProblem.IDS_WITHOUT_LIST)
            return
        ids = tuple(sorted(set(self.user_ids)))
        if not ids:
            raise InvalidAccess(AccessProblem.EMPTY)
        if len(ids) > MAX_LISTED_USERS:
            raise InvalidAccess(AccessProblem.TOO_MANY, limit=MAX_LISTED_USERS)
        if not all(isinstance(i, int) and 0 < i < MAX_USER_ID for i in ids):
            raise InvalidAccess(AccessProblem.NOT_AN_ID)
        object.__setattr__(self, "user_ids", ids)

    @classmethod
    def everyone(cls) -> Access:
        return cls(AccessMode.EVERYONE)

    @classmethod
    def owner_only(cls) -> Access:
        return cls(AccessMode.OWNER)

    @classmethod
    def listed(cls, user_ids: Iterable[int]) -> Access:
        return cls(AccessMode.LISTED, tuple(user_ids))

    @classmethod
    def parse_ids(cls, text: str) -> Access:
        """A list as an owner types it: ids separated by commas, spaces or new lines."""
        parts = [part for part in re.split(r"[\s,;]+", text.strip()) if part]
        if not all(part.isdigit() for part in parts):
            raise InvalidAccess(AccessProblem.NOT_NUMBERS)
        return cls.listed(int(part) for part in parts)

    @classmethod
    def stored(cls, mode: str, user_ids: str | None) -> Access:
        """From the agent's row (columns `access`, `access_user_ids`)."""
        ids = tuple(int(part) for part in (user_ids or "").split(",") if part)
        return cls(AccessMode(mode), ids if mode == AccessMode.LISTED else ())

    @property
    def stored_user_ids(self) -> str | None:
        return ",".join(map(str, self.user_ids)) if self.user_ids else None

    def allowed_user_ids(self, owner_id: int) -> tuple[int, ...]:
        """The runtime's ALLOWED_USER_IDS (empty: everyone)."""
        if self.mode is AccessMode.EVERYONE:
            return ()
        return tuple(sorted({owner_id, *self.user_ids}))

    def others_than(self, owner_id: int) -> tuple[int, ...]:
        """Telegram's `added_user_ids`: the listed users besides the owner."""
        return tuple(user_id for user_id in self.user_ids if user_id != owner_id)


def access_of(agent: Agent) -> Access:
    """The agent's access as stored."""
    return Access.stored(agent.access, agent.access_user_ids)


@dataclass(frozen=True)
class Profile:
    """How the agent's bot presents itself in Telegram."""

    commands: tuple[tuple[str, str], ...]
    description: str
    short_description: str


def utf16_length(text: str) -> int:
    """Telegram counts characters in UTF-16 code units (an emoji may count two)."""
    return len(text.encode("utf-16-le")) // 2


def clip(text: str, limit: int) -> str:
    """At most `limit` characters (UTF-16), cut at a word with an ellipsis if it must be."""
    if utf16_length(text) <= limit:
        return text
    units, end = 0, 0
    for end, character in enumerate(text):  # noqa: B007 (`end` is the cut after the loop)
        units += 2 if ord(character) > 0xFFFF else 1
        if units > limit - 1:  # one unit left for the ellipsis
            break
    cut = text[:end]
    word = cut.rsplit(" ", 1)[0]
    # A cut at a space (unless that loses half the text), not inside a word.
    if not text[end].isspace() and len(word) >= len(cut) // 2:
        cut = word
    return cut.rstrip(" ,;:-") + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())


def derived_description(prompt: str) -> str:
    """The default one-liner: the prompt's first sentence, within Telegram's limit."""
    first = _SENTENCE_END.split(one_line(prompt), maxsplit=1)[0]
    return clip(first, MAX_DESCRIPTION)


def check_description(text: str | None) -> str | None:
    """An owner's one-liner, on one line; None (or blank) means "from the prompt"."""
    if text is None or not text.strip():
        return None
    line = one_line(text)
    if utf16_length(line) > MAX_DESCRIPTION:
        raise InvalidAgentConfig(ConfigProblem.DESCRIPTION_TOO_LONG, limit=MAX_DESCRIPTION)
    return line


def profile_for(*, description: str | None, system_prompt: str) -> Profile:
    text = description or derived_description(system_prompt)
    return Profile(
        commands=tuple(COMMANDS.items()),
        description=clip(text, MAX_DESCRIPTION),
        short_description=clip(text, MAX_SHORT_DESCRIPTION),
    )


def profile_of(agent: Agent) -> Profile:
    """What Telegram should show for this agent (for the card, too)."""
    return profile_for(description=agent.description, system_prompt=agent.system_prompt)
