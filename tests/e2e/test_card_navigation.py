"""One live card per agent: its screens replace each other in one message, old buttons
answer with what is current, risky actions ask first, and a pending edit ends."""

from __future__ import annotations

import asyncio

import pytest

from manager_bot import texts
from manager_bot.services.deployer import NewAgent
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import JsonDict, SimUser
from tests.fakes.waiting import wait_until


async def open_card(user: SimUser, username: str) -> JsonDict:
    await user.send(f"/status {username}")
    return await user.wait_for(text_contains="State:")


def buttons(message: JsonDict | None) -> list[str]:
    assert message is not None
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [b["text"] for row in rows for b in row]


def current(user: SimUser, message: JsonDict) -> JsonDict:
    """The message as the user sees it now (after edits)."""
    (now,) = [m for m in user.messages() if m["message_id"] == message["message_id"]]
    return now


async def test_logs_and_edit_prompt_open_in_the_card_and_back(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, user.id, "nav_bot")
    sent_before = len(telegram.calls("sendMessage", bot=local_manager.fake))

    card = await open_card(user, "nav_bot")
    await user.press("Logs")
    logs = await user.wait_for(text_contains="last log lines of @nav_bot")
    await user.press("Back")
    back = await user.wait_for(text_contains="Version: 1")
    await user.press("Edit prompt")
    ask = await user.wait_for(text_contains="Send the new instructions")
    await user.press("Back")
    again = await user.wait_for(text_contains="Version: 1")

    assert len(telegram.calls("sendMessage", bot=local_manager.fake)) - sent_before == 1
    shown_in = {m["message_id"] for m in (card, logs, back, ask, again)}
    assert shown_in == {card["message_id"]}  # one message, edited
    assert "⏸ Stop" in buttons(again)
    await user.send("You are a pirate.")  # Back left the edit: this is not a prompt
    await user.wait_for(text_contains="I don't know that one")


async def test_a_button_of_a_deleted_agent_shows_the_agents_left(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    gone = await deploy_directly(local_manager, telegram, user.id, "gone_bot")
    await deploy_directly(local_manager, telegram, user.id, "kept_bot")
    card = await open_card(user, "gone_bot")
    await local_manager.deployer.delete(owner_id=user.id, agent_id=gone.id)  # elsewhere

    await user.press("Stop")
    listing = await user.wait_for(text_contains=texts.OUT_OF_DATE)
    assert listing["message_id"] == card["message_id"]
    assert "Your agents" in listing["text"]
    (kept,) = buttons(listing)
    assert kept.endswith("(@kept_bot)")
    await user.wait_for_answer(text_contains=texts.OUT_OF_DATE)
    assert "Agent not found" not in str(user.messages())
    await user.press("kept_bot")  # the list works
    await user.wait_for(text_contains="@kept_bot\nModel")


async def test_stop_on_a_card_that_is_already_stopped_shows_the_card_as_it_is(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, user.id, "still_bot")
    card = await open_card(user, "still_bot")
    assert "⏸ Stop" in buttons(card)
    await local_manager.deployer.stop(owner_id=user.id, agent_id=agent.id)  # elsewhere

    await user.press("Stop")
    fresh = await user.wait_for(text_contains="State: stopped")
    assert fresh["message_id"] == card["message_id"]
    assert "▶️ Resume" in buttons(fresh) and "⏸ Stop" not in buttons(fresh)
    await user.wait_for_answer(text_contains=texts.CARD_WAS_OUT_OF_DATE)
    assert "is stopped" not in fresh["text"]  # nothing was done, nothing said it was


async def test_a_button_of_an_older_card_shows_the_current_card_there(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, user.id, "twice_bot")
    first = await open_card(user, "twice_bot")
    second = await open_card(user, "twice_bot")

    async def first_lost_buttons() -> bool:  # one live card: the older loses its buttons
        return buttons(current(user, first)) == []

    await wait_until(first_lost_buttons)

    await user.press_callback(first, f"ag:stop:{agent.id}")  # a client that still shows it
    await user.wait_for_answer(text_contains=texts.CARD_WAS_OUT_OF_DATE)
    revived = await user.wait_for(text_contains="State: running")
    assert revived["message_id"] == first["message_id"]
    assert "⏸ Stop" in buttons(revived)
    stored = await local_manager.deployer.queries.agent(owner_id=user.id, agent_id=agent.id)
    assert stored.desired_state == "running"  # the old card's Stop did nothing

    async def second_lost_buttons() -> bool:
        return buttons(current(user, second)) == []

    await wait_until(second_lost_buttons)


async def test_delete_asks_in_the_card_and_cancel_goes_back(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, user.id, "doomed_bot")
    card = await open_card(user, "doomed_bot")

    await user.press("Delete")
    ask = await user.wait_for(text_contains="Delete @doomed_bot?")
    assert buttons(ask) == ["Yes, delete", "✖️ Cancel"]
    await user.press("Cancel")
    back = await user.wait_for(text_contains="Version: 1")
    assert await local_manager.deployer.queries.agents_of(user.id) != []

    await user.press("Delete")
    await user.wait_for(text_contains="Delete @doomed_bot?")
    await user.press("Yes, delete")
    done = await user.wait_for(text_contains="@doomed_bot was deleted")
    assert "no agents yet" in done["text"]
    assert {m["message_id"] for m in (ask, back, done)} == {card["message_id"]}
    assert await local_manager.deployer.queries.agents_of(user.id) == []


async def test_rotate_token_asks_in_the_card_and_cancel_keeps_the_token(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    bot = telegram.add_bot(username="rota_bot", first_name="Rota")
    bot.manager = local_manager.fake  # made through Managed Bots
    await local_manager.deployer.deploy(
        NewAgent(
            owner_id=user.id, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt="You are a test agent.", managed=True,
        )
    )  # fmt: skip
    original = bot.token
    card = await open_card(user, "rota_bot")

    await user.press("Rotate token")
    ask = await user.wait_for(text_contains="Give @rota_bot a fresh token?")
    assert ask["message_id"] == card["message_id"]
    await user.press("Cancel")
    await user.wait_for(text_contains="Version: 1")
    assert bot.token == original

    await user.press("Rotate token")
    await user.wait_for(text_contains="fresh token?")
    await user.press("Yes, rotate")
    rotated = await user.wait_for(text_contains="@rota_bot has a fresh token")
    assert rotated["message_id"] == card["message_id"]
    assert bot.token != original


@pytest.mark.parametrize(
    "manager_env",
    [{"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "CARD_EDIT_TIMEOUT": "0.5"}],
)
async def test_a_pending_prompt_edit_expires(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, user.id, "slow_bot")
    await open_card(user, "slow_bot")
    await user.press("Edit prompt")
    await user.wait_for(text_contains="Send the new instructions")
    await asyncio.sleep(0.7)  # longer than CARD_EDIT_TIMEOUT

    await user.send("You are a pirate.")
    await user.wait_for(text_contains="That edit expired; open the card again")
    stored = await local_manager.deployer.queries.agent(owner_id=user.id, agent_id=agent.id)
    assert stored.revision == 1  # the prompt did not change
    await user.send("You are a pirate.")
    await user.wait_for(text_contains="I don't know that one")


async def test_a_command_leaves_a_pending_edit(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, user.id, "busy_bot")
    await open_card(user, "busy_bot")
    await user.press("Edit prompt")
    await user.wait_for(text_contains="Send the new instructions")

    await user.send("/agents")
    await user.wait_for(text_contains="Your agents")
    await user.send("You are a pirate.")
    await user.wait_for(text_contains="I don't know that one")
    stored = await local_manager.deployer.queries.agent(owner_id=user.id, agent_id=agent.id)
    assert stored.revision == 1

    await user.press("busy_bot")  # an edit still works after that
    await user.wait_for(text_contains="State:")
    await user.press("Edit prompt")
    await user.wait_for(text_contains="Send the new instructions")
    await user.send("You are a pirate.")
    changed = await user.wait_for(text_contains="has new instructions")
    assert "Version: 2" in changed["text"]
