"""Access values and the bot's profile text: Telegram's limits, counted as Telegram does."""

from __future__ import annotations

import pytest

from manager_bot.services.agent_profile import (
    MAX_DESCRIPTION,
    MAX_SHORT_DESCRIPTION,
    Access,
    AccessMode,
    check_description,
    clip,
    derived_description,
    profile_for,
    utf16_length,
)
from manager_bot.services.errors import InvalidAccess, InvalidAgentConfig
from runtime.commands import COMMANDS

OWNER = 1001


def test_each_mode_becomes_the_runtimes_allow_list_and_telegrams_added_users() -> None:
    assert Access.everyone().allowed_user_ids(OWNER) == ()
    assert Access.owner_only().allowed_user_ids(OWNER) == (OWNER,)
    listed = Access.listed([7, OWNER, 3, 7])
    assert listed.user_ids == (3, 7, OWNER)
    assert listed.allowed_user_ids(OWNER) == (3, 7, OWNER)
    assert listed.others_than(OWNER) == (3, 7)
    assert Access.stored(listed.mode, listed.stored_user_ids) == listed
    assert Access.stored("owner", None) == Access(AccessMode.OWNER)


@pytest.mark.parametrize("typed", ["", "  ", "12,abc", "-4", "0", "1.5", "9" * 20])
def test_what_is_not_a_list_of_user_ids_is_refused(typed: str) -> None:
    with pytest.raises(InvalidAccess):
        Access.parse_ids(typed)


def test_at_most_fifty_users_are_listed() -> None:
    assert len(Access.parse_ids(" ".join(str(n) for n in range(1, 51))).user_ids) == 50
    with pytest.raises(InvalidAccess):
        Access.listed(range(1, 52))


def test_the_default_description_is_the_prompts_first_sentence() -> None:
    assert derived_description("You are Helper.\nAnswer briefly.") == "You are Helper."
    assert derived_description("Ты — помощник! Отвечай кратко.") == "Ты — помощник!"
    long = derived_description("word " * 400)
    assert utf16_length(long) <= MAX_DESCRIPTION and long.endswith("word…")


def test_descriptions_are_clipped_in_utf16_units_at_a_word() -> None:
    assert clip("hello world and more", 12) == "hello world…"
    emoji = clip("😀" * 100, MAX_SHORT_DESCRIPTION)  # each counts two for Telegram
    assert utf16_length(emoji) <= MAX_SHORT_DESCRIPTION
    profile = profile_for(description="x " * 200, system_prompt="ignored")
    assert utf16_length(profile.short_description) <= MAX_SHORT_DESCRIPTION
    assert profile.commands == tuple(COMMANDS.items())


def test_an_owners_description_is_one_line_within_the_limit() -> None:
    assert check_description("  Cats,\n\ncats   and cats. ") == "Cats, cats and cats."
    assert check_description("   ") is None and check_description(None) is None
    with pytest.raises(InvalidAgentConfig):
        check_description("😀" * 257)  # 514 UTF-16 units
