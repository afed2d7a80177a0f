"""A broadcast survives the manager being killed: it resumes where it stopped, no copy twice."""

from __future__ import annotations

import signal
from pathlib import Path

from sqlalchemy import func, insert, select

from manager_bot.db.migrate import upgrade
from manager_bot.db.models import Delivery, User
from manager_bot.db.session import Database
from tests.e2e.conftest import polling, start_manager_process, stop_process
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until

ADMIN = 900001
RECIPIENTS = [300000 + i for i in range(40)]
WORKERS = 4  # the broadcaster's concurrency: at most this many sends in flight at a kill


def received(telegram: FakeTelegram, bot: FakeBot) -> dict[int, int]:
    counts: dict[int, int] = {}
    for call in telegram.calls("sendMessage", bot=bot):
        if call.status == 200 and "Kill test" in str(call.params.get("text")):
            chat = int(call.params["chat_id"])
            counts[chat] = counts.get(chat, 0) + 1
    return counts


async def test_kill_and_restart_mid_broadcast_sends_each_copy_at_most_once(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hatchbot.db'}"
    await upgrade(url)
    database = Database(url)
    async with database.session() as session:
        await session.execute(
            insert(User), [{"id": uid, "first_name": f"U{uid}"} for uid in RECIPIENTS]
        )
    for uid in RECIPIENTS:
        telegram.user(manager, user_id=uid)
    env = {"ADMIN_IDS": str(ADMIN), "BROADCAST_RATE": "10", "METRICS_PORT": "0"}
    process = await start_manager_process(telegram, manager, tmp_path, **env)
    admin = telegram.user(manager, user_id=ADMIN, first_name="Admin")
    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        await admin.send("/broadcast")
        await admin.wait_for(text_contains="Send the message", timeout=15)
        await admin.send("Kill test")
        await admin.press("All users (41)")
        await admin.wait_for(text_contains="Send it to 41 users")
        await admin.press("Send")

        async def some_sent() -> bool:
            return len(received(telegram, manager)) >= 12

        await wait_until(some_sent, timeout=30)
        process.send_signal(signal.SIGKILL)  # no goodbye: a crash
        await process.wait()
        before_restart = received(telegram, manager)
        assert len(before_restart) < 41

        process = await start_manager_process(telegram, manager, tmp_path, **env)
        await admin.wait_for(text_contains="Broadcast #1 done", timeout=60)
    finally:
        output = await stop_process(process)
    counts = received(telegram, manager)
    counts[ADMIN] -= 1  # the preview the admin saw before pressing Send
    async with database.session() as session:
        rows = dict((await session.execute(select(Delivery.user_id, Delivery.status))).all())
        unsent = await session.scalar(
            select(func.count()).where(Delivery.status.in_(("pending", "sending")))
        )
    await database.close()
    assert unsent == 0
    assert all(n == 1 for n in counts.values()), counts  # nothing twice
    uncertain = {uid for uid, status in rows.items() if status == "uncertain"}
    assert len(uncertain) <= WORKERS
    # Nothing lost: everyone got exactly one copy, except possibly those in flight at the
    # kill, which the report names as uncertain and which are never sent again.
    assert {uid for uid in [*RECIPIENTS, ADMIN] if counts.get(uid, 0) == 0} <= uncertain
    assert {uid for uid, status in rows.items() if status == "sent"} <= set(counts)
    assert manager.token not in output
