"""Messages the manager owes are delayed by Telegram's trouble, never dropped or doubled.

Health alerts go through the outbox: a 429 or a 5xx leaves an alert owed, a 429's
retry_after is respected, and the owner gets exactly one copy once Telegram answers.
A broadcast send whose outcome is unknown (a timeout after the request left) is
reported uncertain and never sent again.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from manager_bot.app import build_bot
from manager_bot.config import ManagerSettings
from manager_bot.db.models import Delivery, Notice
from manager_bot.db.repositories import Repositories
from manager_bot.services.broadcast import Broadcaster, Content
from runtime.settings_loading import load_settings
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import ApiCall, FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import wait_until

ADMIN = 900001


@pytest.fixture
def manager_env() -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "ADMIN_IDS": str(ADMIN)}


async def join(manager: Manager, telegram: FakeTelegram, name: str, **kw: int) -> SimUser:
    user = telegram.user(manager.fake, first_name=name, **kw)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    return user


def alerts(user: SimUser, needle: str) -> list[dict[str, object]]:
    return [m for m in user.messages() if needle in str(m.get("text", ""))]


def sends(telegram: FakeTelegram, manager: Manager, chat_id: int, needle: str) -> list[ApiCall]:
    """Every sendMessage the manager tried to this chat with this text, whatever the answer."""
    return [
        call
        for call in telegram.calls("sendMessage", bot=manager.fake)
        if str(call.params.get("chat_id")) == str(chat_id)
        and needle in str(call.params.get("text", ""))
    ]


async def test_a_429_then_a_502_delay_a_health_alert_and_the_owner_gets_one_copy(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    scheduler = kube_manager.scheduler
    user = await join(kube_manager, telegram, "Alice")
    agent = await deploy_directly(kube_manager, telegram, user.id, "flaky_bot")
    await scheduler.health_check()
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=1,
                          bot=kube_manager.fake, chat_id=user.id)  # fmt: skip
    telegram.inject_fault("sendMessage", status=502, times=1, bot=kube_manager.fake,
                          chat_id=user.id)  # fmt: skip

    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=5)
    await scheduler.health_check()
    assert await scheduler.deliver_notices() == 0  # 429: owed still
    assert await scheduler.deliver_notices() == 0  # within retry_after: not even tried
    assert [c.status for c in sends(telegram, kube_manager, user.id, "is down")] == [429]

    async def delivered() -> bool:
        await scheduler.deliver_notices()
        return bool(alerts(user, "@flaky_bot is down"))

    await wait_until(delivered, timeout=15)
    assert await scheduler.deliver_notices() == 0  # nothing owed any more
    tries = sends(telegram, kube_manager, user.id, "is down")
    assert [c.status for c in tries] == [429, 502, 200]
    assert tries[1].at - tries[0].at >= 1.0  # the 429's retry_after was respected
    (down,) = alerts(user, "is down")  # exactly one copy
    assert "it ran out of memory and was restarted 5 times" in str(down["text"])
    markup = down.get("reply_markup") or {}
    assert isinstance(markup, dict)
    labels = [b["text"] for row in markup.get("inline_keyboard", []) for b in row]
    assert labels == ["📜 Logs", "🔄 Restart", "🔕 Mute 24h"]
    async with kube_manager.database.session() as session:
        (notice,) = (await session.scalars(select(Notice).where(Notice.kind == "health"))).all()
    assert notice.sent_at is not None and notice.attempts == 2


async def test_admins_hear_of_a_failing_sweep_once_even_through_a_500(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    scheduler = kube_manager.scheduler
    admin = telegram.user(kube_manager.fake, user_id=ADMIN, first_name="Admin")
    telegram.inject_fault("sendMessage", status=500, times=1, bot=kube_manager.fake,
                          chat_id=ADMIN)  # fmt: skip
    kube.inject_fault(status=503, verb="list", resource="deployments", times=100)
    for _ in range(3):
        assert await scheduler.health_check() is None
        await scheduler.deliver_notices()
    await admin.wait_for(text_contains="Health checks cannot read the agents")
    kube.clear_faults()
    await scheduler.health_check()
    await scheduler.deliver_notices()
    await admin.wait_for(text_contains="Health checks work again")
    assert [c.status for c in sends(telegram, kube_manager, ADMIN, "cannot read")] == [500, 200]
    assert len(alerts(admin, "cannot read the agents")) == 1
    assert len(alerts(admin, "work again")) == 1


async def test_an_owner_who_blocked_the_bot_is_given_up_on(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    scheduler = kube_manager.scheduler
    user = await join(kube_manager, telegram, "Bob")
    agent = await deploy_directly(kube_manager, telegram, user.id, "lonely_bot")
    await scheduler.health_check()
    telegram.block(kube_manager.fake, user.id)
    kube.mark_crash_looping("agents", f"agent-{agent.id}")
    await scheduler.health_check()
    assert await scheduler.deliver_notices() == 0
    assert await scheduler.deliver_notices() == 0
    assert len(sends(telegram, kube_manager, user.id, "is down")) == 1  # tried once, not again
    async with kube_manager.database.session() as session:
        repos = Repositories(session)
        stored = await repos.users.get(user.id)
        owed = [n for n in await repos.notices.all() if n.sent_at is None]
    assert stored is not None and stored.blocked_bot
    assert owed == []


async def test_a_broadcast_send_that_times_out_is_uncertain_and_not_sent_again(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    users = [await join(local_manager, telegram, f"U{i}") for i in range(3)]
    slow, fake = users[1], local_manager.fake
    # Telegram takes the message but answers after the manager stopped waiting.
    telegram.inject_fault("sendMessage", status=None, delay=2.5, bot=fake, chat_id=slow.id)
    settings = load_settings(
        ManagerSettings, {"MANAGER_BOT_TOKEN": fake.token, "TELEGRAM_API_URL": telegram.url}
    )
    async with build_bot(settings) as bot:
        broadcaster = Broadcaster(bot=bot, database=local_manager.database, send_timeout=1)
        progress = await bot.send_message(ADMIN, "📣 Sending…")
        broadcast_id, recipients = await broadcaster.start(
            author_id=ADMIN, content=Content("Slow news"), audience="all",
            progress=(ADMIN, progress.message_id),
        )  # fmt: skip
        await broadcaster.wait(broadcast_id)
        await broadcaster.close()
    assert recipients == 4
    report = await admin.wait_for(text_contains=f"Broadcast #{broadcast_id} done")
    assert "sent 3, failed 0, blocked 0" in report["text"]
    assert "not sent again): 1" in report["text"]  # one uncertain

    async def late_copy_arrived() -> bool:  # the fake delivers it once its delay is over
        return bool(alerts(slow, "Slow news"))

    await wait_until(late_copy_arrived, timeout=10)
    assert len(sends(telegram, local_manager, slow.id, "Slow news")) == 1  # asked once, only
    assert len(alerts(slow, "Slow news")) == 1
    for user in (users[0], users[2], admin):
        assert len(alerts(user, "Slow news")) == 1
    async with local_manager.database.session() as session:
        rows = dict((await session.execute(select(Delivery.user_id, Delivery.status))).all())
    assert rows[slow.id] == "uncertain"
    assert {rows[u.id] for u in (users[0], users[2], admin)} == {"sent"}


async def test_admins_hear_once_when_reconcile_refuses_to_delete_unknown_agents(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    """Objects of another installation (a wrong or lost database): nothing is deleted, and
    the admins are told, once, through the outbox."""
    admin = await join(kube_manager, telegram, "Admin", user_id=ADMIN)
    owner = await join(kube_manager, telegram, "Owner")
    await deploy_directly(
        kube_manager, telegram, owner.id, "known_bot"
    )  # the database is not empty
    labels = {
        "app.kubernetes.io/managed-by": "hatchbot", "hatchbot.io/agent-id": "stranger01",
        "hatchbot.io/installation": "0000000000000000",
    }  # fmt: skip
    kube.put_object(
        "secrets",
        {"metadata": {"name": "agent-stranger01", "namespace": "agents", "labels": labels}},
    )
    await kube_manager.scheduler.reconcile()
    await kube_manager.scheduler.reconcile()
    told = await admin.wait_for(text_contains="deleted nothing")
    assert "stranger01" in told["text"]
    assert kube.get_object("secrets", "agents", "agent-stranger01") is not None
    await kube_manager.scheduler.deliver_notices()
    assert len(alerts(admin, "deleted nothing")) == 1
