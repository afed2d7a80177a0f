"""A person gets a live AI bot from the manager chat, and runs it from there."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from manager_bot.views.live_edits import PACE_SECONDS
from tests.e2e.conftest import PUBLIC_URL, Manager, fill_wizard, paste_token
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import ApiCall, FakeTelegram, JsonDict
from tests.fakes.user import SimUser
from tests.fakes.waiting import until


async def test_paste_path_ends_with_a_bot_that_answers(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    agent_bot = telegram.add_bot(username="my_helper_bot", first_name="My Helper")
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot")
    await user.press("I already have a bot")
    await user.wait_for(text_contains="Paste the bot's token")
    pasted = await user.send(agent_bot.token)
    await user.wait_for(text_contains="Got it: @my_helper_bot")
    assert pasted["message_id"] in user.deleted_own_messages()
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.press("Friendly assistant")
    await user.wait_for(text_contains="Ready to deploy")
    await user.press("Deploy")
    await user.wait_for(text_contains="is live", timeout=40)
    progress = next(m for m in user.messages() if m["text"].startswith("Deploying"))
    assert progress["text"].count("✅") == 4  # every step done, edited in one message
    card = await user.wait_for(text_contains="Model: openai · gpt-4o-mini")
    assert "@my_helper_bot" in card["text"]
    for message in user.messages():
        assert agent_bot.token not in message["text"]

    # The user's new bot answers through the fake LLM.
    friend = telegram.user(agent_bot, first_name="Friend")
    await friend.send("hi there")
    await friend.wait_for(text_contains="echo: hi there", timeout=20)
    assert openai_server.chat_requests()[-1]["messages"][0]["content"].startswith(
        "You are a friendly"
    )


async def test_two_tap_managed_bot_on_kubernetes(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = telegram.user(kube_manager.fake, first_name="Dana")
    await user.send("/deploy")
    await user.wait_for(text_contains="Create a new bot")
    managed = await user.create_managed_bot(username="dana_ai_bot", name="Dana's AI")
    await user.wait_for(text_contains="Got it: @dana_ai_bot")
    await user.press("OpenAI · gpt-4o")
    await user.wait_for(text_contains="Last step")
    await user.send("You answer questions about gardening.")
    await user.wait_for(text_contains="Ready to deploy")
    await user.press("Deploy")
    await user.wait_for(text_contains="@dana_ai_bot is live", timeout=40)
    (agent,) = await kube_manager.deployer.queries.agents_of(user.id)
    assert agent.managed
    name = f"agent-{agent.id}"
    for kind in ("secrets", "deployments", "services", "networkpolicies", "virtualservices"):
        assert kube.get_object(kind, "agents", name) is not None, kind
    assert managed.webhook is not None
    assert managed.webhook.url == f"{PUBLIC_URL}/webhook/{agent.id}"

    # Rotate token (Managed Bots): a new token, the old one dead, the Secret updated.
    old_token = managed.token
    await user.send("/agents")
    await user.wait_for(text_contains="Your agents")
    await user.press("dana_ai_bot")
    await user.wait_for(text_contains="Version: 1")
    await user.press("Rotate token")
    await user.wait_for(text_contains="fresh token?")  # the card asks first
    await user.press("Yes, rotate")
    await user.wait_for(text_contains="has a fresh token")
    assert managed.token != old_token
    assert (
        kube_manager.deployer.spec_for(
            (await kube_manager.deployer.queries.agents_of(user.id))[0]
        ).secrets.bot_token.get_secret_value()
        == managed.token
    )


async def test_bad_input_at_each_step_gets_a_hint_and_the_same_step(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot")
    await user.send_sticker()
    await user.wait_for(text_contains="tap one of the buttons")
    await user.press("I already have a bot")
    await user.wait_for(text_contains="Paste")
    await user.send("hello, is this where the token goes?")
    await user.wait_for(text_contains="doesn't look like a bot token")
    revoked = telegram.add_bot(username="old_bot")
    telegram.revoke(revoked.token)
    await user.send(revoked.token)
    await user.wait_for(text_contains="invalid or revoked")
    await user.send_photo()
    await user.wait_for(text_contains="Paste the bot's token")
    good = telegram.add_bot(username="fine_bot")
    await user.send(good.token)
    await user.wait_for(text_contains="Got it: @fine_bot")
    await user.send("gpt-4o please")
    await user.wait_for(text_contains="pick a model")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send("x" * 4001)
    await user.wait_for(text_contains="the limit is 4000")
    await user.send_voice()
    await user.wait_for(text_contains="as a text message")
    await user.send("/cancel")
    await user.wait_for(text_contains="Cancelled")
    assert await local_manager.deployer.queries.agents_of(user.id) == []
    await user.send("just chatting")
    await user.wait_for(text_contains="I don't know that one")


async def test_a_bot_already_used_and_the_quota(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    bots = [telegram.add_bot(username=f"bot{n}_bot") for n in range(3)]
    for bot in bots[:2]:
        await owner.send("/deploy")
        await owner.press("I already have a bot")
        await owner.send(bot.token)
        await owner.wait_for(text_contains=f"Got it: @{bot.username}")
        await owner.press("OpenAI · gpt-4o-mini")
        await owner.wait_for(text_contains="Last step")
        await owner.press("Tutor")
        await owner.wait_for(text_contains="Ready to deploy")
        await owner.press("Deploy")
        await owner.wait_for(text_contains=f"@{bot.username} is live", timeout=40)
    await owner.send("/deploy")
    await owner.wait_for(text_contains="You already have 2 agents")
    thief = telegram.user(local_manager.fake, first_name="Mallory")
    await thief.send("/deploy")
    await thief.press("I already have a bot")
    await thief.send(bots[0].token)
    await thief.wait_for(text_contains="already runs as an agent")


async def test_the_wizard_survives_a_manager_restart(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "patient_bot")
    await local_manager.restart()
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await local_manager.restart()
    await user.send("Be patient.")
    summary = await user.wait_for(text_contains="Ready to deploy")
    assert "@patient_bot" in summary["text"] and "Be patient." in summary["text"]


@pytest.mark.parametrize("manager_env", [{"MAX_AGENTS_PER_USER": "2"}])  # no platform key
async def test_own_llm_key_is_checked_and_deleted(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.expected_key = "sk-rightrightrightright00"
    agent_bot = telegram.add_bot(username="keyed_bot")
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.press("I already have a bot")
    await user.send(agent_bot.token)
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="needs your own API key")
    wrong = await user.send("sk-wrongwrongwrongwrong00")
    await user.wait_for(text_contains="rejected that key")
    right = await user.send("sk-rightrightrightright00")
    await user.wait_for(text_contains="Last step")
    assert {wrong["message_id"], right["message_id"]} <= set(user.deleted_own_messages())


async def test_a_tap_and_a_message_sent_together_are_handled_in_order(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    """A button press and a message are different kinds of update; one user's still queue."""
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "quick_fingers_bot")
    await user.press("OpenAI · gpt-4o-mini")  # the prompt follows before any answer
    await user.send("You are quick.")
    summary = await user.wait_for(text_contains="Ready to deploy")
    assert "You are quick." in summary["text"]
    hints = [m for m in user.messages() if "Please pick a model" in m["text"]]
    assert hints == []


# -- progress edits that Telegram is slow to make ----------------------------------------
SLOW_EDIT_S = 1.5


def progress_message(user: SimUser) -> JsonDict:
    """The "Deploying…" message as the user sees it now (edited as steps complete)."""
    (progress,) = [
        m for m in user.messages() if m["text"].startswith(("Deploying", "❌ Deploy failed"))
    ]
    return progress


def progress_edits(telegram: FakeTelegram, manager: Manager, user: SimUser) -> list[ApiCall]:
    """The edits of the progress message Telegram accepted, in order."""
    message_id = progress_message(user)["message_id"]
    return [
        call
        for call in telegram.calls("editMessageText", bot=manager.fake)
        if int(call.params.get("message_id", 0)) == message_id and call.status == 200
    ]


async def test_slow_progress_edits_are_coalesced_and_land_before_the_bot_is_live(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await fill_wizard(user, telegram, "patient_bot")
    telegram.inject_fault("editMessageText", status=None, delay=SLOW_EDIT_S, times=10)
    await user.press("Deploy")
    await user.wait_for(text_contains="is live", timeout=40)
    # Read the instant "is live" arrives: a progress edit still on its way would show here.
    progress = progress_message(user)
    assert progress["text"].count("✅") == 4
    edits = progress_edits(telegram, local_manager, user)
    # Steps reported while an edit was in flight were never shown on their own.
    assert 1 <= len(edits) < 4


async def test_a_quick_deploy_shows_its_start_and_its_end_in_two_edits(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    """Telegram asks for about one message a second in a chat: the steps of a deploy
    that takes less than that are not each shown, only the first and the last."""
    user = telegram.user(kube_manager.fake)
    await fill_wizard(user, telegram, "quick_bot")
    await user.press("Deploy")
    await user.wait_for(text_contains="is live", timeout=40)
    first, last = (edit.params["text"] for edit in progress_edits(telegram, kube_manager, user))
    assert first.count("✅") == 1 and "⏳" not in last
    assert progress_message(user)["text"] == last


async def test_a_slow_step_is_shown_while_it_runs_and_edits_keep_telegrams_pace(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(kube_manager.fake)
    await fill_wizard(user, telegram, "steady_bot")
    telegram.inject_fault("setWebhook", status=None, delay=2.5, times=1)
    await user.press("Deploy")
    await user.wait_for(text_contains="is live", timeout=40)
    edits = progress_edits(telegram, kube_manager, user)
    shown = [edit.params["text"] for edit in edits]
    # While Telegram took its time over the webhook, the steps before it were on screen.
    assert any("✅ Route created" in text and "⏳ Webhook set" in text for text in shown)
    assert "⏳" not in shown[-1]
    # Each edit but the last (said at once when the deploy ends) a second after the one before.
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(edits[:-1])]
    assert all(gap >= PACE_SECONDS * 0.9 for gap in gaps), gaps


async def test_a_failure_is_never_overwritten_by_a_late_progress_edit(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(kube_manager.fake)
    await fill_wizard(user, telegram, "unlucky_bot")
    telegram.inject_fault("editMessageText", status=None, delay=SLOW_EDIT_S, times=10)
    telegram.inject_fault("setWebhook", status=500, times=50)
    await user.press("Deploy")
    await user.wait_for(text_contains="Deploy failed", timeout=60)
    await asyncio.sleep(SLOW_EDIT_S * 2)  # time for any edit still in flight to land
    assert progress_message(user)["text"].startswith("❌ Deploy failed at")


async def test_a_progress_edit_refused_with_429_is_caught_up_by_the_next(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await fill_wizard(user, telegram, "throttled_edits_bot")
    telegram.inject_fault("editMessageText", status=429, retry_after=1, times=1)
    await user.press("Deploy")
    await user.wait_for(text_contains="is live", timeout=40)
    assert progress_message(user)["text"].count("✅") == 4
    refused = [c for c in telegram.calls("editMessageText") if c.status == 429]
    assert len(refused) == 1


def apologies(user: SimUser) -> list[str]:
    """What the manager said in this chat that reads as its error path."""
    texts_seen = [m.get("text", "") for m in user.bot.messages_in(user.chat_id)]
    return [text for text in texts_seen if "went wrong" in text or "ref=" in text]


async def test_a_reply_refused_with_429_is_sent_once_flood_control_allows(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    """Any reply, not only a deploy's outcome: the wizard's first step refused by flood
    control still reaches the user, after the wait Telegram asked for."""
    user = telegram.user(local_manager.fake)
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=1, chat_id=user.chat_id)
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot", timeout=15)
    refused = [c for c in telegram.calls("sendMessage") if c.status == 429]
    assert len(refused) == 1 and "Let's make your AI bot" in refused[0].params["text"]
    assert not apologies(user)


async def test_a_failed_deploy_is_told_through_flood_control(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    """The edit that tells the failure is refused by flood control, twice: it still ends
    up on the progress message, and no apology is said."""
    user = telegram.user(kube_manager.fake)
    await fill_wizard(user, telegram, "flooded_failure_bot")
    # The webhook step fails, slowly enough to refuse the next edit: the failure's.
    telegram.inject_fault("setWebhook", status=500, delay=2.0, times=50)
    await user.press("Deploy")
    await until(lambda: any("✅ Route created" in m["text"] for m in user.messages()), timeout=30)
    telegram.inject_fault("editMessageText", status=429, retry_after=1, times=2)
    await user.wait_for(text_contains="Deploy failed", timeout=60)
    assert progress_message(user)["text"].startswith("❌ Deploy failed at")
    assert len([c for c in telegram.calls("editMessageText") if c.status == 429]) == 2
    assert not apologies(user)


async def test_is_live_lost_to_a_telegram_error_ends_in_an_apology_on_the_progress(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    """The agent is live but "is live" cannot be sent (a 500): the progress message says
    something went wrong, with a reference, instead of staying as it was."""
    user = telegram.user(local_manager.fake)
    await fill_wizard(user, telegram, "unannounced_bot")
    telegram.inject_fault("sendMessage", status=500, times=1, chat_id=user.chat_id, after=1)
    await user.press("Deploy")
    (apology,) = await until(lambda: apologies(user), timeout=40)
    assert "Reference:" in apology
    texts_seen = [m["text"] for m in user.messages()]
    assert not [text for text in texts_seen if text.startswith("Deploying")]  # edited away
    assert not [text for text in texts_seen if "is live" in text]
    (agent,) = await local_manager.deployer.queries.agents_of(user.id)  # live all the same
    assert (agent.bot_username, agent.desired_state) == ("unannounced_bot", "running")


async def test_is_live_refused_with_429_is_sent_once_flood_control_allows(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    """Telegram's flood control refuses the "is live" message (a fast deploy says a lot
    in one chat at once): it is sent again after the wait Telegram asks for, and the
    user is not told that something went wrong."""
    user = telegram.user(local_manager.fake)
    await fill_wizard(user, telegram, "flooded_bot")
    await user.press("Deploy")
    await user.wait_for(text_contains="Deploying")
    telegram.inject_fault("sendMessage", status=429, retry_after=1, times=1, chat_id=user.chat_id)
    await user.wait_for(text_contains="@flooded_bot is live", timeout=40)
    await user.wait_for(text_contains="State: running", timeout=10)  # and its card
    refused = [c for c in telegram.calls("sendMessage") if c.status == 429]
    assert len(refused) == 1 and "is live" in refused[0].params["text"]
    assert not apologies(user)
