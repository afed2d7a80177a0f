"""despite_flood_control: a 429 is waited out and said again, within limits."""

from __future__ import annotations

import pytest
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import SendMessage

from manager_bot.views.flood import ATTEMPTS, LONGEST_WAIT_S, despite_flood_control


def refusal(seconds: int) -> TelegramRetryAfter:
    method = SendMessage(chat_id=1, text="is live")
    return TelegramRetryAfter(method=method, message="Too Many Requests", retry_after=seconds)


async def test_said_again_after_the_wait_telegram_asks_for() -> None:
    tries: list[int] = []

    async def say() -> str:
        tries.append(len(tries))
        if len(tries) == 1:
            raise refusal(0)
        return "sent"

    assert await despite_flood_control(say) == "sent"
    assert len(tries) == 2


async def test_gives_up_after_a_few_refusals_and_at_once_on_a_long_wait() -> None:
    tries: list[int] = []

    async def always_refused() -> None:
        tries.append(1)
        raise refusal(0)

    with pytest.raises(TelegramRetryAfter):
        await despite_flood_control(always_refused)
    assert len(tries) == ATTEMPTS

    async def refused_for_long() -> None:
        tries.append(1)
        raise refusal(LONGEST_WAIT_S + 1)

    tries.clear()
    with pytest.raises(TelegramRetryAfter):
        await despite_flood_control(refused_for_long)
    assert len(tries) == 1
