"""Agents remember their chats across restarts, forget on /reset and on the owner's word,
and keep nothing once deleted. Local agents are real runtime processes; their memory
is kept by the manager's gateway in the manager's database."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select, update

from manager_bot.db.models import Conversation, utcnow
from manager_bot.db.repositories import Repositories
from tests.e2e.conftest import Manager, deploy_directly
from tests.e2e.test_gateway_chat import environ, process_of
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import wait_until

ANSWER_TIMEOUT = 20  # a local agent is a real process


async def chat(person: SimUser, text: str) -> None:
    await person.send(text)
    await person.wait_for(text_contains=f"echo: {text}", timeout=ANSWER_TIMEOUT)


def seen_by_model(openai_server: FakeOpenAI) -> list[str]:
    """What the model got in the last request, after the system prompt."""
    messages = openai_server.chat_requests()[-1]["messages"]
    return [str(message["content"]) for message in messages[1:]]


async def stored_chats(manager: Manager, agent_id: str) -> dict[int, list[str]]:
    async with manager.parts.database.session() as session:
        rows = (
            await session.scalars(select(Conversation).where(Conversation.agent_id == agent_id))
        ).all()
    vault = manager.parts.vault
    return {
        row.chat_id: [turn["content"] for turn in json.loads(vault.decrypt(row.turns))]
        for row in rows
    }


async def remembered(manager: Manager, agent_id: str, chat_id: int, last: str) -> None:
    """The write-behind has landed: the chat's stored turns end with `last`."""

    async def landed() -> bool:
        turns = (await stored_chats(manager, agent_id)).get(chat_id, [])
        return bool(turns) and turns[-1] == last

    await wait_until(landed, timeout=10)


async def test_an_agent_remembers_a_chat_across_restarts_of_its_process(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "elephant_bot")
    friend = telegram.user(telegram.bot("elephant_bot"))
    await chat(friend, "my name is Ada")
    await remembered(local_manager, agent.id, friend.id, "echo: my name is Ada")
    async with local_manager.parts.database.session() as session:
        raw = (await session.scalars(select(Conversation.turns))).all()
    assert raw and not any("Ada" in value for value in raw)  # encrypted at rest
    pid = process_of(tmp_path, agent.id)
    env = environ(pid)
    assert env["MEMORY_URL"] == f"{local_manager.gateway.url}/memory"
    assert not any("sqlite" in value or "redis" in value for value in env.values())

    await local_manager.deployer.restart(owner_id=owner.id, agent_id=agent.id)
    assert process_of(tmp_path, agent.id) != pid
    await chat(friend, "what is my name?")
    assert seen_by_model(openai_server) == [
        "my name is Ada", "echo: my name is Ada", "what is my name?",
    ]  # fmt: skip

    # The manager restarting (and with it the in-process gateway) forgets nothing either.
    await local_manager.restart()
    await local_manager.deployer.restart(owner_id=owner.id, agent_id=agent.id)
    await chat(friend, "still there?")
    assert seen_by_model(openai_server)[:2] == ["my name is Ada", "echo: my name is Ada"]


async def test_reset_forgets_one_chat_for_good(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "goldfish_bot")
    bot = telegram.bot("goldfish_bot")
    friend, other = telegram.user(bot), telegram.user(bot, first_name="Otto")
    await chat(friend, "secret plan")
    await chat(other, "other plan")
    await remembered(local_manager, agent.id, other.id, "echo: other plan")

    await friend.send("/reset")
    await friend.wait_for(text_contains="forgotten our conversation", timeout=ANSWER_TIMEOUT)
    await wait_until(
        lambda: _absent(local_manager, agent.id, friend.id), timeout=10
    )  # the stored turns are gone too, not only the process's copy
    await local_manager.deployer.restart(owner_id=owner.id, agent_id=agent.id)
    await chat(friend, "what was the plan?")
    assert seen_by_model(openai_server) == ["what was the plan?"]
    await chat(other, "and mine?")
    assert seen_by_model(openai_server)[:2] == ["other plan", "echo: other plan"]


async def _absent(manager: Manager, agent_id: str, chat_id: int) -> bool:
    return chat_id not in await stored_chats(manager, agent_id)


async def test_forget_all_on_the_card_asks_then_forgets_every_chat_at_once(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "amnesia_bot")
    bot = telegram.bot("amnesia_bot")
    friend, other = telegram.user(bot), telegram.user(bot, first_name="Otto")
    await chat(friend, "remember apples")
    await chat(other, "remember pears")
    await remembered(local_manager, agent.id, other.id, "echo: remember pears")
    pid = process_of(tmp_path, agent.id)

    await owner.send("/status amnesia_bot")
    await owner.wait_for(text_contains="State:")
    await owner.press("Forget conversations")
    await owner.wait_for(text_contains="forget every conversation")
    await owner.press("Yes, forget everything")
    await owner.wait_for(text_contains="@amnesia_bot has forgotten every conversation.")

    assert await stored_chats(local_manager, agent.id) == {}
    assert process_of(tmp_path, agent.id) == pid  # told, not restarted
    await chat(friend, "what fruit?")
    assert seen_by_model(openai_server) == ["what fruit?"]
    await chat(other, "what fruit?")
    assert seen_by_model(openai_server) == ["what fruit?"]


async def test_a_stopped_agents_conversations_are_forgotten_without_starting_it(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "napping_bot")
    friend = telegram.user(telegram.bot("napping_bot"))
    await chat(friend, "note this")
    await remembered(local_manager, agent.id, friend.id, "echo: note this")
    await local_manager.deployer.stop(owner_id=owner.id, agent_id=agent.id)

    await owner.send("/status napping_bot")
    await owner.wait_for(text_contains="State:")
    await owner.press("Forget conversations")
    await owner.press("Yes, forget everything")
    await owner.wait_for(text_contains="has forgotten every conversation.")
    assert await stored_chats(local_manager, agent.id) == {}
    stored = await local_manager.deployer.queries.agent(owner_id=owner.id, agent_id=agent.id)
    assert stored.desired_state == "stopped"

    await local_manager.deployer.resume(owner_id=owner.id, agent_id=agent.id)
    await chat(friend, "anything noted?")
    assert seen_by_model(openai_server) == ["anything noted?"]


async def test_another_users_agent_id_forged_into_forget_changes_nothing(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    agent = await deploy_directly(local_manager, telegram, owner.id, "guarded_bot")
    friend = telegram.user(telegram.bot("guarded_bot"))
    await chat(friend, "keep me")
    await remembered(local_manager, agent.id, friend.id, "echo: keep me")

    intruder = telegram.user(local_manager.fake, first_name="Mallory")
    await intruder.send("/agents")
    await intruder.wait_for(text_contains="no agents yet")
    anchor = intruder.last_message()
    assert anchor is not None
    await intruder.press_callback(anchor, f"ag:forget_yes:{agent.id}")
    await intruder.wait_for(text_contains="This menu is out of date", after=0)
    assert friend.id in await stored_chats(local_manager, agent.id)


async def test_deleting_an_agent_deletes_its_memory_and_idle_chats_are_dropped(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake)
    kept = await deploy_directly(local_manager, telegram, owner.id, "keeper_bot")
    gone = await deploy_directly(local_manager, telegram, owner.id, "leaver_bot")
    fresh, idle = (
        telegram.user(telegram.bot("keeper_bot")),
        telegram.user(telegram.bot("keeper_bot"), first_name="Ida"),
    )
    leaver_friend = telegram.user(telegram.bot("leaver_bot"))
    await chat(fresh, "recent")
    await chat(idle, "long ago")
    await chat(leaver_friend, "bye")
    await remembered(local_manager, gone.id, leaver_friend.id, "echo: bye")
    await remembered(local_manager, kept.id, idle.id, "echo: long ago")

    await local_manager.deployer.delete(owner_id=owner.id, agent_id=gone.id)
    assert await stored_chats(local_manager, gone.id) == {}
    # A flush that lands after the delete (the gateway caches who may write) is swept.
    async with local_manager.parts.database.session() as session:
        await Repositories(session).conversations.save(gone.id, leaver_friend.id, "late")

    idle_days = local_manager.parts.settings.memory_idle_days
    async with local_manager.parts.database.session() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.chat_id == idle.id)
            .values(updated_at=utcnow() - timedelta(days=idle_days, minutes=1))
        )
    assert await local_manager.parts.scheduler.forget_idle_conversations() == 2
    assert set(await stored_chats(local_manager, kept.id)) == {fresh.id}
    assert await stored_chats(local_manager, gone.id) == {}


async def test_an_agent_that_cannot_be_told_is_restarted_to_forget(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    """A pod that does not answer /memory/forget (here: one whose runtime predates it)
    still forgets at once: it is restarted, and a fresh process remembers nothing."""
    owner = telegram.user(kube_manager.fake)
    agent = await deploy_directly(kube_manager, telegram, owner.id, "oldimage_bot")
    async with kube_manager.parts.database.session() as session:
        await Repositories(session).conversations.save(
            agent.id, 4242, kube_manager.parts.vault.encrypt("[]")
        )
    name = f"agent-{agent.id}"

    def restarted_at() -> str | None:
        deployment = kube.get_object("deployments", "agents", name) or {}
        template = deployment.get("spec", {}).get("template", {}).get("metadata", {})
        return (template.get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")

    assert restarted_at() is None
    await owner.send("/status oldimage_bot")
    await owner.wait_for(text_contains="State:")
    await owner.press("Forget conversations")
    await owner.press("Yes, forget everything")
    await owner.wait_for(text_contains="it was restarted to forget at once", timeout=30)
    assert restarted_at() is not None
    assert await stored_chats(kube_manager, agent.id) == {}
