"""Recent: the per-user memory of the manager keeps only the most recently used entries."""

from __future__ import annotations

from manager_bot.recent import Recent


def test_the_oldest_entry_is_forgotten_beyond_the_size() -> None:
    recent: Recent[int, str] = Recent(3)
    for user in range(1, 6):
        recent[user] = f"user {user}"
    assert len(recent) == 3
    assert 1 not in recent and 2 not in recent
    assert [recent.get(user) for user in (3, 4, 5)] == ["user 3", "user 4", "user 5"]


def test_reading_or_writing_an_entry_makes_it_the_newest() -> None:
    recent: Recent[int, str] = Recent(2)
    recent[1] = "first"
    recent[2] = "second"
    assert recent[1] == "first"  # 1 is now newer than 2
    recent[3] = "third"
    assert 2 not in recent and 1 in recent
    recent[1] = "first, again"
    assert recent.get(3) == "third"  # 3 is now newer than 1
    recent[4] = "fourth"
    assert 1 not in recent and recent.get(3) == "third" and recent.get(4) == "fourth"


def test_get_and_pop_of_a_missing_entry() -> None:
    recent: Recent[int, str] = Recent(2)
    assert recent.get(7) is None and recent.get(7, "none") == "none"
    assert recent.pop(7) is None
    recent[7] = "seven"
    assert recent.pop(7) == "seven" and 7 not in recent and len(recent) == 0
