"""The per-user inboxes in a real Redis: stored once, drained in order, one holder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram.types import Update
from redis.asyncio import Redis

from manager_bot.intake.inbox import UpdateInbox, lane_of
from tests.fakes.waiting import until, wait_until

BOT_ID = 7_000_000_001


def message(update_id: int, user_id: int, text: str) -> tuple[Update, str]:
    raw: dict[str, Any] = {
        "update_id": update_id,
        "message": {
            "message_id": update_id, "date": 1, "text": text,
            "chat": {"id": user_id, "type": "private", "first_name": "A"},
            "from": {"id": user_id, "is_bot": False, "first_name": "A"},
        },
    }  # fmt: skip
    body = json.dumps(raw)
    return Update.model_validate_json(body), body


class Handled:
    """What the 'Dispatcher' was fed, by replica; `gate` holds a replica mid-update."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []
        self.gate: dict[str, asyncio.Event] = {}

    def feed_for(self, name: str) -> Any:
        async def feed(update: Update) -> None:
            gate = self.gate.get(name)
            if gate is not None:
                await gate.wait()
            assert update.message is not None
            self.seen.append((name, update.update_id, update.message.text or ""))

        return feed


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def holds(redis: Redis, update: Update) -> bool:
    """Whether some replica holds the update's lane."""
    return bool(await redis.exists(f"hatchbot:intake:{BOT_ID}:{{{lane_of(update)}}}:lock"))


def inbox(redis: Redis, handled: Handled, name: str, **options: Any) -> UpdateInbox:
    return UpdateInbox(
        redis, bot_id=BOT_ID, feed=handled.feed_for(name), parse=Update.model_validate_json,
        name=name, **options,
    )  # fmt: skip


async def test_a_redelivered_update_is_stored_and_handled_once(redis: Redis) -> None:
    handled = Handled()
    replica = inbox(redis, handled, "a")
    update, body = message(1, 42, "/start")
    assert await replica.put(update, body) is True
    assert await replica.put(update, body) is False  # Telegram retried: our 200 was lost
    await until(lambda: handled.seen, timeout=10)
    await replica.stop()
    assert handled.seen == [("a", 1, "/start")]
    assert await replica.pending(lane_of(update)) == 0


async def test_one_holder_drains_a_user_in_update_id_order(redis: Redis) -> None:
    handled = Handled()
    a, b = inbox(redis, handled, "a"), inbox(redis, handled, "b")
    handled.gate["a"] = asyncio.Event()  # a takes the lane and stalls on the first update
    first, body = message(10, 7, "one")
    await a.put(first, body)
    await wait_until(lambda: holds(redis, first), timeout=5)
    # The rest arrive at b, out of order; b does not drain a lane a holds.
    for update_id, text in ((13, "four"), (11, "two"), (12, "three")):
        await b.put(*message(update_id, 7, text))
    other, other_body = message(20, 8, "another user")
    await b.put(other, other_body)
    await until(lambda: any(seen[1] == 20 for seen in handled.seen), timeout=5)
    assert [seen[1] for seen in handled.seen] == [20]  # user 8 is not held up by user 7

    handled.gate["a"].set()
    await until(lambda: len(handled.seen) == 5, timeout=10)
    user_7 = [(name, update_id) for name, update_id, _ in handled.seen if update_id != 20]
    assert user_7 == [("a", 10), ("a", 11), ("a", 12), ("a", 13)]
    await a.stop()
    await b.stop()


async def test_a_lock_left_by_a_dead_replica_expires_and_the_sweep_drains(
    redis: Redis,
) -> None:
    handled = Handled()
    update, body = message(30, 9, "left behind")
    lane = lane_of(update)
    # A replica died holding the lane: its lock is there, nobody renews it.
    await redis.set(f"hatchbot:intake:{BOT_ID}:{{{lane}}}:lock", "dead:1:x", px=300)
    survivor = inbox(redis, handled, "b", sweep_every=0.1)
    await survivor.put(update, body)  # refused the lock for now
    survivor.start()
    await until(lambda: handled.seen, timeout=10)
    assert handled.seen == [("b", 30, "left behind")]
    await survivor.stop()


async def test_stopping_leaves_the_rest_for_the_others(redis: Redis) -> None:
    handled = Handled()
    a, b = inbox(redis, handled, "a"), inbox(redis, handled, "b", sweep_every=0.1)
    handled.gate["a"] = asyncio.Event()
    for update_id in (40, 41, 42):
        await a.put(*message(update_id, 5, str(update_id)))
    await wait_until(lambda: holds(redis, message(40, 5, "")[0]), timeout=5)
    stopping = asyncio.create_task(a.stop(grace=10))
    handled.gate["a"].set()  # the update in hand finishes
    await stopping
    b.start()
    await until(lambda: len(handled.seen) == 3, timeout=10)
    assert handled.seen == [("a", 40, "40"), ("b", 41, "41"), ("b", 42, "42")]
    await b.stop()
