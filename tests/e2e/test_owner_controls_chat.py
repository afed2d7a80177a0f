"""An owner's controls on the agent card: who can talk to the agent, a pasted bot's new
token and the bot's description, each told in the owner's chat and checked where it
lands (the agent's own answers, Telegram's profile of the bot)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from manager_bot import texts
from manager_bot.services.agent_profile import AccessMode, access_of
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubelet_env import container_env, secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.user import JsonDict, SimUser

REFUSAL = "this bot is private"  # the runtime's answer to someone not let in
ANSWER_TIMEOUT = 20  # a local agent is a real process; a new access restarts it


async def open_card(user: SimUser, username: str) -> JsonDict:
    await user.send(f"/status {username}")
    return await user.wait_for(text_contains="State:")


def buttons(message: JsonDict) -> list[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [b["text"] for row in rows for b in row]


async def answered(person: SimUser, text: str) -> None:
    await person.send(text)
    await person.wait_for(text_contains=f"echo: {text}", timeout=ANSWER_TIMEOUT)


async def refused(person: SimUser, text: str) -> None:
    await person.send(text)
    await person.wait_for(text_contains=REFUSAL, timeout=ANSWER_TIMEOUT)


async def test_only_me_keeps_strangers_out_and_everyone_lets_them_back_in(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "shy_bot")
    bot = telegram.bot("shy_bot")
    stranger = telegram.user(bot, first_name="Stan")
    owner_in_agent = telegram.user(bot, user_id=owner.id)
    await answered(stranger, "hello")

    card = await open_card(owner, "shy_bot")
    await owner.press("Who can talk to it")
    screen = await owner.wait_for(text_contains="Who can talk to @shy_bot: everyone")
    assert screen["message_id"] == card["message_id"]
    assert buttons(screen) == ["✅ Everyone", "Only me", "Listed users…", "⬅️ Back"]
    await owner.press("Only me")
    done = await owner.wait_for(text_contains="Only you can talk to @shy_bot now")
    assert done["message_id"] == card["message_id"] and "State:" in done["text"]

    await refused(stranger, "anyone there?")
    await answered(owner_in_agent, "it is me")

    await owner.press("Who can talk to it")
    await owner.wait_for(text_contains="Who can talk to @shy_bot: only you")
    await owner.press("Everyone")
    await owner.wait_for(text_contains="Everyone can talk to @shy_bot now")
    await answered(stranger, "back again")
    stored = await local_manager.deployer.queries.agent(owner_id=owner.id, agent_id=agent.id)
    assert access_of(stored).mode is AccessMode.EVERYONE


async def test_listed_users_by_id_and_by_forwarded_message(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "club_bot")
    bot = telegram.bot("club_bot")
    typed_in = telegram.user(bot, first_name="Tia")
    forwarded_in = telegram.user(bot, first_name="Fay")
    left_out = telegram.user(bot, first_name="Lou")

    await open_card(owner, "club_bot")
    await owner.press("Who can talk to it")
    await owner.press("Listed users…")
    await owner.wait_for(text_contains="forward me a message from each person")
    await owner.send("twelve")
    await owner.wait_for(text_contains="Telegram user ids are numbers")
    await owner.send(f"{typed_in.id},")
    await owner.wait_for(text_contains=f"Listed so far: {typed_in.id}.")
    await owner.forward("see you at the club", hidden_name="Mystery")
    await owner.wait_for(text_contains="Mystery hides their account in forwarded messages")
    await owner.forward("see you at the club", author=forwarded_in)
    so_far = await owner.wait_for(text_contains="Listed so far:")
    assert f"{typed_in.id}, {forwarded_in.id}" in so_far["text"]
    assert buttons(so_far) == [texts.DONE_BUTTON]
    await owner.press("Done")
    applied = await owner.wait_for(text_contains="You and 2 listed user(s) can talk to @club_bot")
    assert applied["message_id"] == so_far["message_id"]  # the list turned into the card

    stored = await local_manager.deployer.queries.agent(owner_id=owner.id, agent_id=agent.id)
    assert access_of(stored).user_ids == tuple(sorted((typed_in.id, forwarded_in.id)))
    await answered(typed_in, "hi from Tia")
    await answered(forwarded_in, "hi from Fay")
    await refused(left_out, "hi from Lou")

    await owner.press("Who can talk to it")
    await owner.wait_for(text_contains=f"you and the users listed ({typed_in.id}")


async def test_a_command_ends_a_pending_list_and_its_done_changes_nothing(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "calm_bot")
    await open_card(owner, "calm_bot")
    await owner.press("Who can talk to it")
    await owner.press("Listed users…")
    await owner.send("4242")
    await owner.wait_for(text_contains="Listed so far: 4242.")

    await owner.send("/agents")
    await owner.wait_for(text_contains="Your agents")
    await owner.press("Done")
    await owner.wait_for(text_contains=texts.ACCESS_LIST_GONE)
    stored = await local_manager.deployer.queries.agent(owner_id=owner.id, agent_id=agent.id)
    assert access_of(stored).mode is AccessMode.EVERYONE


async def test_a_pasted_bot_takes_its_reissued_token_and_refuses_another_bots(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, owner.id, "leaky_bot")
    bot = telegram.bot("leaky_bot")
    other = telegram.add_bot(username="other_bot")
    friend = telegram.user(bot)
    await answered(friend, "before")

    card = await open_card(owner, "leaky_bot")
    await owner.press("Replace token")
    ask = await owner.wait_for(text_contains="Paste the new token from @BotFather for @leaky_bot")
    assert ask["message_id"] == card["message_id"]

    wrong = await owner.send(other.token)
    await owner.wait_for(text_contains="That token belongs to @other_bot, not @leaky_bot")
    assert wrong["message_id"] in owner.deleted_own_messages()

    old_token = bot.token
    new_token = telegram.reissue_token(bot)  # BotFather's /revoke
    pasted = await owner.send(new_token)  # the edit is still pending after a refusal
    replaced = await owner.wait_for(
        text_contains="@leaky_bot now runs with its new token", timeout=ANSWER_TIMEOUT
    )
    assert pasted["message_id"] in owner.deleted_own_messages()
    assert "State:" in replaced["text"]
    assert old_token not in str(owner.messages()) and new_token not in str(owner.messages())
    await answered(friend, "after")  # the agent runs with the new token


async def test_a_revoked_token_is_refused_in_plain_words(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, owner.id, "lost_bot")
    bot = telegram.bot("lost_bot")
    revoked = bot.token
    telegram.reissue_token(bot)
    await open_card(owner, "lost_bot")
    await owner.press("Replace token")
    await owner.wait_for(text_contains="Paste the new token")
    pasted = await owner.send(revoked)
    await owner.wait_for(text_contains=texts.TOKEN_INVALID)
    assert pasted["message_id"] in owner.deleted_own_messages()


async def test_a_managed_bot_offers_no_token_replacement_and_its_access_reaches_telegram(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = telegram.user(kube_manager.fake, first_name="Dana")
    managed = await deploy_managed(user, kube_manager)
    card = await open_card(user, "dana_ai_bot")
    assert "🔑 Rotate token" in buttons(card)
    assert "🔑 Replace token" not in buttons(card)

    await user.press("Who can talk to it")
    await user.press("Only me")
    await user.wait_for(text_contains="Only you can talk to @dana_ai_bot now")
    (agent,) = await kube_manager.deployer.queries.agents_of(user.id)
    assert allowed_user_ids(kube, agent.id) == str(user.id)
    assert managed.token not in str(user.messages())


def allowed_user_ids(kube: FakeKubernetes, agent_id: str) -> str | None:
    """What the agent's container gets as ALLOWED_USER_IDS (its Deployment, as rolled)."""
    name = f"agent-{agent_id}"
    deployment = kube.get_object("deployments", "agents", name)
    secret = kube.get_object("secrets", "agents", name)
    assert deployment is not None and secret is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container, secrets={name: secret_strings(secret)}, config_maps={})
    return env.get("ALLOWED_USER_IDS")


async def deploy_managed(user: SimUser, manager: Manager) -> FakeBot:
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
    return managed


async def test_a_new_description_reaches_telegram_and_back_to_the_prompt(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, owner.id, "tutor_bot")
    bot = telegram.bot("tutor_bot")
    card = await open_card(owner, "tutor_bot")
    await owner.press("Description")
    screen = await owner.wait_for(text_contains="What Telegram shows about @tutor_bot")
    assert screen["message_id"] == card["message_id"]
    assert "You are a test agent." in screen["text"]
    assert buttons(screen) == ["✏️ Edit", "⬅️ Back"]  # it already comes from the prompt

    await owner.press("Edit")
    await owner.wait_for(text_contains="Send the new description of @tutor_bot")
    await owner.send("x" * 513)
    await owner.wait_for(text_contains="That is 513 characters; Telegram allows 512")
    await owner.send("Your patient maths tutor.\nAsk away!")
    await owner.wait_for(text_contains="@tutor_bot has a new description.")
    assert await description_at_telegram(telegram, bot) == "Your patient maths tutor. Ask away!"

    await owner.press("Description")
    await owner.wait_for(text_contains="(your own words)")
    await owner.press("From the prompt")
    await owner.wait_for(text_contains="the first sentence of its instructions again")
    assert await description_at_telegram(telegram, bot) == "You are a test agent."


async def description_at_telegram(telegram: FakeTelegram, bot: FakeBot) -> str:
    """What getMyDescription answers with the agent bot's token."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{telegram.url}/bot{bot.token}/getMyDescription", json={}) as response,
    ):
        body = await response.json()
    description: str = body["result"]["description"]
    return description


@pytest.mark.parametrize(
    "manager_env",
    [{"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "CARD_EDIT_TIMEOUT": "0.5"}],
)
async def test_a_pending_token_replacement_expires_and_still_deletes_the_token(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, owner.id, "late_bot")
    bot = telegram.bot("late_bot")
    await open_card(owner, "late_bot")
    await owner.press("Replace token")
    await owner.wait_for(text_contains="Paste the new token")
    await asyncio.sleep(0.7)  # longer than CARD_EDIT_TIMEOUT
    pasted = await owner.send(bot.token)
    await owner.wait_for(text_contains="That edit expired")
    assert pasted["message_id"] in owner.deleted_own_messages()
