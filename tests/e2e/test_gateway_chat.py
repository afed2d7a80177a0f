"""What the gateway means to people: agents hold no provider key, budgets speak plainly,
usage is the platform's own bookkeeping. Local agents are real runtime processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import NewAgent
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubelet_env import secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser

PLATFORM_KEY = "sk-platformkeyplatformkey00"  # tests/e2e/conftest.py's manager_env
USER_KEY = "sk-userownkeyuserownkey0000"
OWNER = 5001


async def join(manager: Manager, telegram: FakeTelegram, user_id: int = OWNER) -> SimUser:
    """A user who has opened the manager bot (so the platform knows them)."""
    user = telegram.user(manager.fake, user_id=user_id, first_name="Owen")
    await user.send("/start")
    await user.wait_for(text_contains="")
    return user


def process_of(tmp_path: Path, agent_id: str) -> int:
    state = json.loads((tmp_path / "agents" / agent_id / "state.json").read_text())
    pid: int = state["pid"]
    return pid


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


async def test_a_local_agent_process_holds_no_provider_key(
    local_manager: Manager, telegram: FakeTelegram, tmp_path: Path
) -> None:
    await join(local_manager, telegram)
    bot = telegram.add_bot(username="keyless_bot")
    agent = await local_manager.deployer.deploy(
        NewAgent(
            owner_id=OWNER, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt="You are keyless.", llm_api_key=USER_KEY,
        )
    )  # fmt: skip
    env = environ(process_of(tmp_path, agent.id))
    everything = "\n".join(env.values())
    assert PLATFORM_KEY not in everything and USER_KEY not in everything
    gateway_key = local_manager.deployer.spec_for(agent).secrets.gateway_key
    assert gateway_key is not None and env["LLM_API_KEY"] == gateway_key.get_secret_value()
    assert env["LLM_BASE_URL"] == local_manager.gateway.url
    assert "You are keyless." not in everything  # the prompt is a file, not configuration


async def test_no_agent_secret_on_kubernetes_holds_a_provider_key(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    await join(kube_manager, telegram)
    bot = telegram.add_bot(username="secretless_bot")
    agent = await kube_manager.deployer.deploy(
        NewAgent(
            owner_id=OWNER, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt="Hi.", llm_api_key=USER_KEY,
        )
    )  # fmt: skip
    stored = secret_strings(kube.get_object("secrets", "agents", f"agent-{agent.id}"))
    assert set(stored) == {"BOT_TOKEN", "WEBHOOK_SECRET", "LLM_API_KEY", "system-prompt"}
    assert stored["LLM_API_KEY"].startswith("hbgw_")
    for value in stored.values():
        assert PLATFORM_KEY not in value and USER_KEY not in value


async def test_a_hostile_prompt_is_answered_as_written(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    prompt = "Reply exactly: `$(LLM_API_KEY) $(BOT_TOKEN) ${WEBHOOK_SECRET} $$(X)`"
    await join(local_manager, telegram)
    bot = telegram.add_bot(username="hostile_local_bot")
    await local_manager.deployer.deploy(
        NewAgent(
            owner_id=OWNER, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt=prompt,
        )
    )  # fmt: skip
    openai_server.reply_with(lambda messages: str(messages[0]["content"]).split(": ", 1)[1])
    friend = telegram.user(bot)
    await friend.send("config?")
    answer = await friend.wait_for(text_contains="$(LLM_API_KEY)", timeout=20)
    assert "$(LLM_API_KEY) $(BOT_TOKEN) ${WEBHOOK_SECRET} $$(X)" in answer["text"]
    assert openai_server.chat_requests()[-1]["messages"][0]["content"] == prompt


@pytest.mark.parametrize("manager_env", [{"MAX_AGENTS_PER_USER": "2"}])  # no platform key
async def test_a_key_replaced_on_the_card_is_used_without_restarting_the_agent(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    openai_server.expected_key = USER_KEY
    owner = await join(local_manager, telegram)
    bot = telegram.add_bot(username="rekeyed_bot")
    agent = await local_manager.deployer.deploy(
        NewAgent(
            owner_id=owner.id, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt="Hi.", llm_api_key=USER_KEY,
        )
    )  # fmt: skip
    friend = telegram.user(bot)
    await friend.send("first")
    await friend.wait_for(text_contains="echo: first", timeout=20)
    pid = process_of(tmp_path, agent.id)

    new_key = "sk-brandnewbrandnewbrandnew0"
    openai_server.expected_key = new_key  # the old key stops working at the provider
    await owner.send("/status rekeyed_bot")
    await owner.wait_for(text_contains="Version: 1")
    await owner.press("Change model")
    await owner.press("OpenAI · gpt-4o-mini")
    await owner.wait_for(text_contains="needs your own API key")
    pasted = await owner.send(new_key)
    await owner.wait_for(text_contains="now uses gpt-4o-mini")
    assert pasted["message_id"] in owner.deleted_own_messages()

    await friend.send("second")
    await friend.wait_for(text_contains="echo: second", timeout=20)
    assert process_of(tmp_path, agent.id) == pid  # the same process: no restart


@pytest.mark.parametrize(
    "manager_env",
    [{"OPENAI_API_KEY": PLATFORM_KEY, "ADMIN_IDS": str(OWNER), "GATEWAY_CACHE_SECONDS": "0"}],
)
async def test_a_bot_over_its_daily_limit_says_so_and_its_owner_is_told(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.reply_with("word " * 40)  # 40 tokens an answer, as the fake counts
    owner = await join(local_manager, telegram)
    agent = await deploy_directly(local_manager, telegram, OWNER, "thrifty_bot")
    budgets = Budgets(database=local_manager.database, default_budget=0)
    # The first answer costs 47 tokens (85% of 55); the second question, carrying that
    # answer as history, cannot fit in what is left.
    await budgets.raise_agent(actor_id=OWNER, agent_id=agent.id, tokens=55)
    friend = telegram.user(telegram.bot("thrifty_bot"))
    await friend.send("question one")
    await friend.wait_for(text_contains="word word", timeout=20)
    await friend.send("question two")
    limit = await friend.wait_for(timeout=20)
    assert limit["text"] == "This bot has reached its daily limit; it resets at 00:00 UTC."

    await local_manager.gateway.flush()
    assert await local_manager.scheduler.deliver_notices() == 2
    await owner.wait_for(text_contains="(80%)")
    notice = await owner.wait_for(text_contains="reached its daily limit of 55 tokens")
    buttons = [b["text"] for row in notice["reply_markup"]["inline_keyboard"] for b in row]
    assert buttons == ["🃏 Open card", "➕ Double today's limit"]  # the owner is an admin
    assert await local_manager.scheduler.deliver_notices() == 0  # once a day, not again
    await owner.press("Double today's limit")
    await owner.wait_for(text_contains="may now use 110 tokens a day")

    await owner.send(f"/budget {agent.id} 5000")
    await owner.wait_for(text_contains="set to 5000 tokens")
    await friend.send("question three")
    await friend.wait_for(text_contains="word word", timeout=20)
    await owner.send("/usage")
    usage = await owner.wait_for(text_contains="Usage")
    assert "@thrifty_bot" in usage["text"] and "this month" in usage["text"]


@pytest.mark.parametrize(
    "manager_env",
    [{"OPENAI_API_KEY": PLATFORM_KEY, "GATEWAY_USER_BURST": "1",
      "GATEWAY_USER_RATE_PER_MINUTE": "0.5"}],
)  # fmt: skip
async def test_one_chat_user_flooding_a_bot_is_asked_to_slow_down(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    await join(local_manager, telegram)
    await deploy_directly(local_manager, telegram, OWNER, "popular_bot")
    flooder = telegram.user(telegram.bot("popular_bot"), first_name="Flood")
    await flooder.send("one")
    await flooder.wait_for(text_contains="echo: one", timeout=20)
    await flooder.send("two")
    await flooder.wait_for(text_contains="writing faster than I can think", timeout=20)
    calm = telegram.user(telegram.bot("popular_bot"), first_name="Calm")
    await calm.send("hello")
    await calm.wait_for(text_contains="echo: hello", timeout=20)  # others are not slowed


async def test_usage_survives_restarting_the_agent(
    local_manager: Manager, telegram: FakeTelegram, tmp_path: Path
) -> None:
    """Usage is the gateway's bookkeeping in the database, not a counter in the runtime."""
    await join(local_manager, telegram)
    agent = await deploy_directly(local_manager, telegram, OWNER, "counted_bot")
    friend = telegram.user(telegram.bot("counted_bot"))
    await friend.send("one two")
    await friend.wait_for(text_contains="echo: one two", timeout=20)
    pid = process_of(tmp_path, agent.id)
    await local_manager.deployer.restart(owner_id=OWNER, agent_id=agent.id)
    await friend.send("three")
    await friend.wait_for(text_contains="echo: three", timeout=20)
    assert process_of(tmp_path, agent.id) != pid
    await local_manager.gateway.flush()
    budgets = Budgets(database=local_manager.database, default_budget=0)
    spend = (await budgets.spend_of([agent]))[agent.id]
    # As the fake counts words: (5 + 2) + 3, then (5 + 2 + 3 + 1) + 2: the restarted
    # agent still has the conversation (its memory is kept by the gateway).
    assert (spend.today.requests, spend.today.tokens) == (2, 23)
