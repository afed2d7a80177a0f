"""FloodControlRetry: a call Telegram refuses with 429 is made again after the wait it
asks for, within limits; callers that pace themselves see the 429 at once.

Through a real Bot and session to the fake Telegram over HTTP, as the manager's bot is
built (manager_bot.app.build_bot)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramRetryAfter

from manager_bot.flood_control import ATTEMPTS, LONGEST_WAIT_S, FloodControlRetry, paced_by_caller
from manager_bot.metrics import TelegramErrorMetrics
from manager_bot.telegram_session import JsonSession
from tests.fakes.telegram_api import FakeBot, FakeTelegram

CHAT = 5550002


@pytest.fixture
async def manager(telegram: FakeTelegram) -> AsyncIterator[tuple[FakeBot, Bot]]:
    fake = telegram.add_bot(username="manager_bot")
    session = JsonSession(api=TelegramAPIServer.from_base(telegram.url))
    session.middleware(FloodControlRetry())
    session.middleware(TelegramErrorMetrics())
    bot = Bot(fake.token, session=session)
    yield fake, bot
    await session.close()


def sends(telegram: FakeTelegram) -> list[int]:
    """The status of each sendMessage the fake answered."""
    return [call.status for call in telegram.calls("sendMessage")]


async def test_a_refused_reply_is_sent_after_the_wait_telegram_asks_for(
    telegram: FakeTelegram, manager: tuple[FakeBot, Bot]
) -> None:
    fake, bot = manager
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=1)
    sent = await bot.send_message(CHAT, "Your bots")
    assert sent.text == "Your bots"
    assert sends(telegram) == [429, 200]
    assert [m["text"] for m in fake.messages_in(CHAT)] == ["Your bots"]


async def test_it_gives_up_after_a_few_refusals(
    telegram: FakeTelegram, manager: tuple[FakeBot, Bot]
) -> None:
    _, bot = manager
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=ATTEMPTS)
    with pytest.raises(TelegramRetryAfter):
        await bot.send_message(CHAT, "Your bots")
    assert sends(telegram) == [429] * ATTEMPTS


async def test_a_wait_longer_than_a_minute_is_not_waited(
    telegram: FakeTelegram, manager: tuple[FakeBot, Bot]
) -> None:
    _, bot = manager
    telegram.inject_fault("sendMessage", status=429, retry_after=LONGEST_WAIT_S + 1, times=1)
    with pytest.raises(TelegramRetryAfter) as refused:
        await bot.send_message(CHAT, "Your bots")
    assert refused.value.retry_after == LONGEST_WAIT_S + 1
    assert sends(telegram) == [429]


async def test_callers_that_pace_themselves_see_the_429_at_once(
    telegram: FakeTelegram, manager: tuple[FakeBot, Bot]
) -> None:
    _, bot = manager
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=1)
    with paced_by_caller(), pytest.raises(TelegramRetryAfter):
        await bot.send_message(CHAT, "Broadcast")
    assert sends(telegram) == [429]
    await bot.send_message(CHAT, "Your bots")  # outside: retried as usual
    assert sends(telegram) == [429, 200]
