"""The admin console in chat: broadcast, stats, users, bans, audit; and what others see of it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from manager_bot.db.models import Delivery, User
from manager_bot.db.repositories import Repositories
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.user import SimUser

ADMIN = 900001


@pytest.fixture
def manager_env() -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "ADMIN_IDS": str(ADMIN),
        "BROADCAST_RATE": "50",
    }


async def join(manager: Manager, telegram: FakeTelegram, name: str, **kw: int) -> SimUser:
    user = telegram.user(manager.fake, first_name=name, **kw)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    return user


def copies(telegram: FakeTelegram, bot: FakeBot, chat_id: int, needle: str) -> int:
    """How many broadcast copies reached this chat (sendMessage or sendPhoto calls that worked)."""
    return sum(
        1
        for call in telegram.calls(bot=bot)
        if call.method in ("sendMessage", "sendPhoto")
        and call.status == 200
        and str(call.params.get("chat_id")) == str(chat_id)
        and needle in str(call.params.get("text") or call.params.get("caption") or "")
    )


async def deliveries(manager: Manager) -> dict[int, str]:
    async with manager.database.session() as session:
        found = (await session.execute(select(Delivery.user_id, Delivery.status))).all()
    return {user_id: status for user_id, status in found}


async def test_commands_and_buttons_are_admin_only(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = await join(local_manager, telegram, "Mallory")
    for command in ("/broadcast", "/broadcast_cancel", "/stats", "/users", "/ban 1", "/unban 1",
                    "/audit"):  # fmt: skip
        await user.send(command)
        await user.wait_for(text_contains="I don't know that one")
    start = await user.wait_for(text_contains="I don't know")
    await user.press_callback(start, "ad:send:")
    await user.wait_for_answer(text_contains="not found")
    async with local_manager.database.session() as session:
        assert await Repositories(session).audit.recent() == []  # nothing was done


async def test_broadcast_with_formatting_preview_audience_and_report(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    alice = await join(local_manager, telegram, "Alice")
    bob = await join(local_manager, telegram, "Bob")
    carol = await join(local_manager, telegram, "Carol")
    telegram.block(local_manager.fake, carol.id)

    await admin.send("/broadcast")
    await admin.wait_for(text_contains="Send the message to broadcast")
    await admin.send_sticker()
    await admin.wait_for(text_contains="A broadcast is text or one photo")
    await admin.send("x" * 5000)
    await admin.wait_for(text_contains="That is 5000 characters")
    await admin.send("Maintenance tonight", entities=[{"type": "bold", "offset": 0, "length": 11}])
    await admin.wait_for(text_contains="Who should get it?")
    await admin.press("All users (4)")
    preview = await admin.wait_for(text_contains="Maintenance tonight")
    await admin.wait_for(text_contains="Send it to 4 users (all users)?")
    assert preview["text"] == "Maintenance tonight"
    previews = [c for c in telegram.calls("sendMessage", bot=local_manager.fake)
                if c.params.get("chat_id") in (ADMIN, str(ADMIN))
                and "Maintenance" in str(c.params.get("text"))]  # fmt: skip
    assert previews[0].params["text"] == "<b>Maintenance</b> tonight"
    await admin.press("Send")
    report = await admin.wait_for(text_contains="done", timeout=20)
    assert "sent 3, failed 0, blocked 1" in report["text"]  # the admin gets a copy too

    for user in (alice, bob):
        assert copies(telegram, local_manager.fake, user.id, "<b>Maintenance</b> tonight") == 1
    assert copies(telegram, local_manager.fake, admin.id, "<b>Maintenance</b> tonight") == 2
    async with local_manager.database.session() as session:
        blocked = await session.get(User, carol.id)
        assert blocked is not None and blocked.blocked_bot
    assert (await deliveries(local_manager))[carol.id] == "blocked"

    # The next broadcast skips the user who blocked the bot; a photo with a caption.
    await admin.send("/broadcast")
    await admin.send_photo(caption="New models available")
    await admin.wait_for(text_contains="Who should get it?")
    await admin.press("All users (3)")
    await admin.press("Send")
    await admin.wait_for(text_contains="sent 3, failed 0, blocked 0", timeout=20)
    assert copies(telegram, local_manager.fake, alice.id, "New models available") == 1
    async with local_manager.database.session() as session:
        actions = [(e.action, e.outcome) for e in await Repositories(session).audit.recent()]
    assert ("broadcast", "started") in actions and ("broadcast", "ok") in actions


async def test_a_429_and_a_502_mid_broadcast_are_retried_and_nobody_gets_two(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    users = [await join(local_manager, telegram, f"U{i}") for i in range(6)]
    await admin.send("/broadcast")
    await admin.send("Flood test")
    await admin.press("All users (7)")
    fake = local_manager.fake
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=2, bot=fake,
                          chat_id=users[2].id)  # fmt: skip
    telegram.inject_fault("sendMessage", status=502, times=1, bot=fake, chat_id=users[4].id)
    await admin.press("Send")
    await admin.wait_for(text_contains="sent 7, failed 0, blocked 0", timeout=30)
    for user in users:
        assert copies(telegram, local_manager.fake, user.id, "Flood test") == 1
    chats = {str(users[2].id), str(users[4].id)}
    answers = [
        c.status
        for c in telegram.calls("sendMessage", bot=fake)
        if str(c.params.get("chat_id")) in chats and c.params.get("text") == "Flood test"
    ]
    assert sorted(answers) == [200, 200, 429, 429, 502]
    assert copies(telegram, local_manager.fake, admin.id, "Flood test") == 2  # and the preview


async def test_a_429_mid_broadcast_holds_every_sender_for_the_wait_telegram_asks(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    """Telegram's flood control is for the whole bot: after a 429 the broadcast stops
    sending to everyone (not only to the refused recipient) until retry_after is over,
    then goes on. The manager's own retry of a refused call must not take this 429 in
    its place (flood_control.paced_by_caller)."""
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    users = [await join(local_manager, telegram, f"P{i}") for i in range(12)]
    fake = local_manager.fake
    await admin.send("/broadcast")
    await admin.send("Paced test")
    await admin.press("All users (13)")
    telegram.inject_fault("sendMessage", status=429, retry_after=3, times=1, bot=fake,
                          chat_id=users[0].id)  # fmt: skip
    await admin.press("Send")
    await admin.wait_for(text_contains="sent 13, failed 0, blocked 0", timeout=40)
    sends = [
        call
        for call in telegram.calls("sendMessage", bot=fake)
        if call.params.get("text") == "Paced test"
    ]
    (refused,) = [call for call in sends if call.status == 429]
    # Only what the other three senders had already sent may arrive in the pause.
    in_the_pause = [c for c in sends if refused.at < c.at < refused.at + 2.0]
    assert len(in_the_pause) <= 3, len(in_the_pause)
    assert len([c for c in sends if c.at > refused.at]) > 3  # it did go on after
    for user in users:
        assert copies(telegram, fake, user.id, "Paced test") == 1


async def test_audiences_stats_users_ban_unban_and_audit(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    admin = await join(kube_manager, telegram, "Admin", user_id=ADMIN)
    owner = await join(kube_manager, telegram, "Owner")
    await join(kube_manager, telegram, "Idle")
    agents = [
        await deploy_directly(kube_manager, telegram, owner.id, f"owned{i}_bot") for i in range(2)
    ]
    await kube_manager.scheduler.health_check()
    kube.mark_crash_looping("agents", f"agent-{agents[0].id}")
    await kube_manager.scheduler.health_check()

    await admin.send("/broadcast")
    await admin.send("Audience check")
    menu = await admin.wait_for(text_contains="Who should get it?")
    labels = [b["text"] for row in menu["reply_markup"]["inline_keyboard"] for b in row]
    assert labels[:3] == ["All users (3)", "Users with agents (1)", "Users with an agent down (1)"]
    await admin.send("/cancel")

    await admin.send("/stats")
    stats = await admin.wait_for(text_contains="Users")
    assert "Users: 3 (0 banned, 0 blocked the bot)" in stats["text"]
    assert "last 24 h: 2 ok, 0 failed" in stats["text"]
    assert "running/crash-looping" in stats["text"] and "running/running" in stats["text"]

    await admin.send("/users")
    listing = await admin.wait_for(text_contains="of 3")
    assert f"{owner.id}" in listing["text"] and "@owned0_bot" in listing["text"]

    await admin.send("/ban notanumber")
    await admin.wait_for(text_contains="Usage: /ban")
    await admin.send("/ban 123456")
    await admin.wait_for(text_contains="No user 123456")
    await admin.send(f"/ban {owner.id}")
    await admin.wait_for(text_contains=f"User {owner.id} is banned; 2 of their agents stopped")
    for agent in agents:
        assert (
            kube.get_object("deployments", "agents", f"agent-{agent.id}")["spec"]["replicas"] == 0
        )
    await owner.send("/agents")
    await owner.wait_for(text_contains="Your access to Hatchbot is suspended")
    await owner.send("/deploy")  # ignored, without a second note
    await admin.send(f"/unban {owner.id}")
    await admin.wait_for(text_contains="may use Hatchbot again")
    await owner.send("/agents")
    await owner.wait_for(text_contains="Your agents")
    assert len([m for m in owner.messages() if "suspended" in m.get("text", "")]) == 1

    await admin.send("/audit")
    log = await admin.wait_for(text_contains="Audit log")
    for action in ("ban", "unban", "stats", "users", "deploy"):
        assert f" {action} " in log["text"]


async def test_broadcast_cancel_stops_sending(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    for i in range(5):
        await join(local_manager, telegram, f"U{i}")
    telegram.inject_fault("sendMessage", status=None, delay=0.5, times=10, bot=local_manager.fake)
    await admin.send("/broadcast")
    await admin.send("Slow one")
    await admin.press("All users (6)")
    await admin.press("Send")
    await admin.wait_for(text_contains="sending to 6 users")
    await admin.send("/broadcast_cancel")
    await admin.wait_for(text_contains="Stopped broadcast #", timeout=10)
    await admin.wait_for(text_contains="stopped in", timeout=10)
    states = await deliveries(local_manager)
    assert "pending" in states.values()  # the rest was not sent
    await admin.send("/broadcast_cancel")
    await admin.wait_for(text_contains="No broadcast is running")


async def test_users_are_paged(local_manager: Manager, telegram: FakeTelegram) -> None:
    admin = await join(local_manager, telegram, "Admin", user_id=ADMIN)
    async with local_manager.database.session() as session:
        for i in range(12):
            await Repositories(session).users.upsert(
                user_id=500000 + i, username=None, first_name=f"Member{i}"
            )
    await admin.send("/users")
    first = await admin.wait_for(text_contains="Users 1–10 of 13")
    assert "Member8" in first["text"] and "Member9" not in first["text"]
    await admin.press("▶️")
    second = await admin.wait_for(text_contains="11–13 of 13")
    assert "Member11" in second["text"]
    await admin.press("◀️")
    await admin.wait_for(text_contains="1–10 of 13")
