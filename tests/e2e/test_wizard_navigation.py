"""Getting around the deploy wizard: commands leave it, « Back steps back, a key is
checked in view, secrets pasted anywhere are deleted, and "Create a new bot" is
offered only when Telegram lets the manager create bots."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Manager, paste_token
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser

A_BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"


def said(user: SimUser, text: str) -> list[str]:
    return [m["text"] for m in user.messages() if text in m.get("text", "")]


def offers_managed_bot(user: SimUser) -> bool:
    buttons = [button for row in user.reply_keyboard() for button in row]
    return any(isinstance(b, dict) and "request_managed_bot" in b for b in buttons)


# -- commands mid-wizard ----------------------------------------------------------------


async def test_a_command_mid_wizard_leaves_it_and_does_what_it_says(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot")
    await user.send("/agents")
    await user.wait_for(text_contains="Left the deploy wizard.")
    await user.wait_for(text_contains="no agents yet")
    await user.send("hello")  # no longer the wizard's input
    await user.wait_for(text_contains="I don't know that one")
    assert said(user, "Please tap one of the buttons") == []

    # /help and /status are handled before the wizard's routers: they leave it too.
    await paste_token(user, telegram, "chatty_bot")
    await user.send("/help")
    await user.wait_for(text_contains="Left the deploy wizard.")
    await user.wait_for(text_contains="/deploy — create a new AI bot")
    await user.press("OpenAI · gpt-4o-mini")  # the wizard's old buttons are stale now
    await user.wait_for_answer(text_contains="not found")
    await paste_token(user, telegram, "chatty2_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send("/status nosuch_bot")
    await user.wait_for(text_contains="Left the deploy wizard.")
    await user.wait_for(text_contains="no agents yet")
    await user.send("You are a helper.")  # not taken as the instructions
    await user.wait_for(text_contains="I don't know that one")
    assert said(user, "Ready to deploy") == []


async def test_deploy_mid_wizard_starts_over_and_cancel_still_cancels(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "restart_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot")
    assert said(user, "Left the deploy wizard") == []
    await user.send_sticker()  # the first step again, not the prompt step
    await user.wait_for(text_contains="tap one of the buttons")
    await user.send("/cancel")
    await user.wait_for(text_contains="Cancelled. Nothing was changed.")
    assert said(user, "Left the deploy wizard") == []


# -- « Back -----------------------------------------------------------------------------


async def test_back_from_each_step_of_the_pasted_path(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.press("I already have a bot")
    await user.wait_for(text_contains="Paste the bot's token")
    await user.press("« Back")  # token -> the choice of bot, with its keyboard
    await user.wait_for(text_contains="Let's make your AI bot")
    assert offers_managed_bot(user)
    await user.press("I already have a bot")
    first = telegram.add_bot(username="first_try_bot")
    await user.send(first.token)
    await user.wait_for(text_contains="Now pick the AI model")
    await user.press("« Back")  # model -> token: the same message, edited
    pasting = await user.wait_for(text_contains="Paste the bot's token")
    assert pasting.get("edit_date")
    second = telegram.add_bot(username="second_try_bot")
    await user.send(second.token)
    await user.wait_for(text_contains="Got it: @second_try_bot")

    await user.press("Other OpenAI model…")
    await user.wait_for(text_contains="Type the model's id")
    await user.press("« Back")  # typed model id -> model
    await user.wait_for(text_contains="Now pick the AI model")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.press("« Back")  # prompt -> model, the bot kept
    await user.wait_for(text_contains="Now pick the AI model")
    await user.press("OpenAI · gpt-4o")
    await user.wait_for(text_contains="Last step")
    await user.send("You answer in rhymes.")
    await user.wait_for(text_contains="Ready to deploy")
    await user.press("« Back")  # summary -> prompt
    await user.wait_for(text_contains="Last step")
    await user.press("Tutor")
    summary = await user.wait_for(text_contains="Ready to deploy")
    assert "@second_try_bot" in summary["text"] and "gpt-4o" in summary["text"]
    assert "patient tutor" in summary["text"]

    # A Back under a step already left changes nothing.
    await user.press_callback(user.messages()[0], "wb:model_name")
    await user.wait_for_answer(text_contains="already behind you")
    await user.press("Deploy")
    await user.wait_for(text_contains="@second_try_bot is live", timeout=40)


@pytest.fixture
def manager_env(openai_server: FakeOpenAI) -> dict[str, str]:
    """The fake stands for an operator-allowed internal endpoint (an in-cluster Ollama)."""
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "MAX_AGENTS_PER_USER": "2",
        "GATEWAY_ALLOWED_ENDPOINTS": openai_server.url.split("/")[2],
    }


OWN_KEYS = pytest.mark.parametrize("manager_env", [{"MAX_AGENTS_PER_USER": "2"}])  # no platform key


async def test_back_through_the_endpoint_and_key_steps(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "endpoint_bot")
    await user.press("My own endpoint")
    await user.wait_for(text_contains="base URL")
    await user.press("« Back")  # endpoint -> model
    await user.wait_for(text_contains="Now pick the AI model")
    await user.press("My own endpoint")
    await user.wait_for(text_contains="base URL")
    await user.send(openai_server.url)
    await user.wait_for(text_contains="Type the model's id")
    await user.press("« Back")  # model id -> endpoint
    await user.wait_for(text_contains="base URL")
    await user.send(openai_server.url)
    await user.wait_for(text_contains="Type the model's id")
    await user.send("llama3.1:8b")
    await user.wait_for(text_contains="needs none")
    await user.press("« Back")  # key -> model id
    await user.wait_for(text_contains="Type the model's id")
    await user.send("qwen2.5:7b")
    await user.wait_for(text_contains="needs none")
    await user.press("It needs no key")
    await user.wait_for(text_contains="Last step")
    await user.press("« Back")  # prompt -> key
    await user.wait_for(text_contains="needs none")
    await user.press("It needs no key")
    await user.wait_for(text_contains="Last step")
    await user.press("Friendly assistant")
    summary = await user.wait_for(text_contains="Ready to deploy")
    assert "qwen2.5:7b" in summary["text"]


@OWN_KEYS
async def test_back_from_and_to_the_key_step(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.expected_key = "sk-keyforbackkeyforback00"
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "keyed_back_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="needs your own API key")
    await user.press("« Back")
    await user.wait_for(text_contains="Now pick the AI model")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="needs your own API key")
    await user.send("sk-keyforbackkeyforback00")
    await user.wait_for(text_contains="Last step")
    await user.press("« Back")
    await user.wait_for(text_contains="needs your own API key")


# -- the key checked in view, secrets deleted ------------------------------------------


@OWN_KEYS
async def test_checking_your_key_turns_into_the_verdict(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.expected_key = "sk-rightrightrightright00"
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "checked_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="needs your own API key")
    await user.send("sk-wrongwrongwrongwrong00")
    rejected = await user.wait_for(text_contains="rejected that key")
    await user.send("sk-rightrightrightright00")
    accepted = await user.wait_for(text_contains="accepted the key")
    await user.wait_for(text_contains="Last step")

    sent = [
        call.params
        for call in telegram.calls("sendMessage", bot=local_manager.fake)
        if call.params.get("text") == "Checking your key…"
    ]
    assert len(sent) == 2  # said at once, before the provider answered
    edits = {
        int(call.params["message_id"])
        for call in telegram.calls("editMessageText", bot=local_manager.fake)
    }
    for verdict in (rejected, accepted):
        assert verdict["message_id"] in edits and verdict.get("edit_date")
    assert said(user, "Checking your key") == []  # both turned into their verdict


async def test_a_token_in_the_instructions_is_deleted_and_not_kept(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await paste_token(user, telegram, "careful_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    leaked = await user.send(f"You are a helper. Use the bot token {A_BOT_TOKEN} if asked.")
    await user.wait_for(text_contains="Send the instructions without it")
    assert leaked["message_id"] in user.deleted_own_messages()
    await user.send("You are a helper.")
    summary = await user.wait_for(text_contains="Ready to deploy")
    assert A_BOT_TOKEN not in summary["text"]
    await user.press("Deploy")
    await user.wait_for(text_contains="@careful_bot is live", timeout=40)
    (agent,) = await local_manager.deployer.queries.agents_of(user.id)
    assert agent.system_prompt == "You are a helper."


async def test_a_key_pasted_where_a_button_was_expected_is_deleted(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.wait_for(text_contains="Let's make your AI bot")
    google = await user.send("AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI")
    await user.wait_for(text_contains="deleted your message for safety")
    await paste_token(user, telegram, "buttons_bot")
    openai_key = await user.send("sk-proj-abcdefghijklmnopqrstuvwxyz0123")
    anthropic_key = await user.send("here: sk-ant-api03-abcdefghijklmnopqrstuvwxyz")
    gateway = await user.send("hbgw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd")
    await user.press("OpenAI · gpt-4o-mini")  # the model step is still there
    await user.wait_for(text_contains="Last step")
    deleted = set(user.deleted_own_messages())
    for message in (google, openai_key, anthropic_key, gateway):
        assert message["message_id"] in deleted
    assert len(said(user, "deleted your message for safety")) == 4


# -- Managed Bots availability ----------------------------------------------------------


async def test_create_a_new_bot_only_with_bot_management_mode(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.wait_for(text_contains="Tap Create a new bot")
    assert offers_managed_bot(user)
    await user.send("/cancel")
    await user.wait_for(text_contains="Cancelled")

    local_manager.fake.can_manage_bots = False  # Bot Management Mode turned off in BotFather
    await local_manager.restart()  # getMe is asked once per process
    await user.send("/deploy")
    choose = await user.wait_for(text_contains="Let's make your AI bot")
    assert "/newbot" in choose["text"] and "Create a new bot" not in choose["text"]
    assert not offers_managed_bot(user)
    await user.press("I already have a bot")
    await user.wait_for(text_contains="Paste the bot's token")
