"""Running agents from the chat: the card, its actions, commands, and others' agents."""

from __future__ import annotations

import pytest

from manager_bot import texts
from tests.e2e.conftest import Manager, deploy_directly, fill_wizard
from tests.fakes.kubelet_env import container_env, mounted_files, secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import JsonDict, SimUser
from tests.fakes.waiting import wait_until


async def deploy_one(user: SimUser, telegram: FakeTelegram, username: str) -> None:
    await fill_wizard(user, telegram, username)
    await user.press("Deploy")
    await user.wait_for(text_contains=f"@{username} is live", timeout=40)
    # The card the deploy sends after it: a /status sent before it lands would take it
    # for its own answer.
    await user.wait_for(text_contains="State: running", timeout=40)


async def test_card_actions_stop_resume_edit_revert_logs_delete(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = telegram.user(kube_manager.fake)
    await deploy_one(user, telegram, "card_bot")
    (agent,) = await kube_manager.deployer.queries.agents_of(user.id)
    deployment = f"agent-{agent.id}"

    await user.send("/agents")
    await user.wait_for(text_contains="Your agents")
    await user.press("card_bot")
    await user.wait_for(text_contains="State: running")

    await user.press("Stop")
    await user.wait_for(text_contains="is stopped")
    assert kube.get_object("deployments", "agents", deployment)["spec"]["replicas"] == 0
    card = await user.wait_for(text_contains="State: stopped")
    assert any(
        "Resume" in b["text"] for row in card["reply_markup"]["inline_keyboard"] for b in row
    )
    await user.press("Resume")
    await user.wait_for(text_contains="is running again")
    assert kube.get_object("deployments", "agents", deployment)["spec"]["replicas"] == 1

    await user.press("Edit prompt")
    await user.wait_for(text_contains="Send the new instructions")
    await user.send("You are a pirate.")
    await user.wait_for(text_contains="has new instructions")
    assert prompt_in(kube, deployment) == "You are a pirate."
    await user.send("/status card_bot")
    await user.wait_for(text_contains="Version: 2")
    await user.press("Revert")
    await user.wait_for(text_contains="back to its previous settings")
    assert prompt_in(kube, deployment) == "You are a test agent."

    kube.set_pod_log(
        "agents", deployment, f"started\nusing token {telegram.bot('card_bot').token}\nready"
    )
    await user.send("/logs card_bot")
    logs = await user.wait_for(text_contains="started")
    assert telegram.bot("card_bot").token not in logs["text"]
    assert "[redacted]" in logs["text"]

    await user.send("/delete")
    await user.wait_for(text_contains="Which agent?")
    await user.press("card_bot")
    await user.wait_for(text_contains="Delete @card_bot?")
    await user.press("Yes, delete")
    await user.wait_for(text_contains="@card_bot was deleted")
    assert kube.objects("deployments", "agents") == []
    await user.send("/agents")
    await user.wait_for(text_contains="no agents yet")


async def test_forged_and_foreign_agent_ids_are_out_of_date_and_change_nothing(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    owner = telegram.user(local_manager.fake, first_name="Olga")
    await deploy_one(owner, telegram, "olga_bot")
    (agent,) = await local_manager.deployer.queries.agents_of(owner.id)

    mallory = telegram.user(local_manager.fake, first_name="Mallory")
    await mallory.send("/agents")
    await mallory.wait_for(text_contains="no agents yet")
    anchor = mallory.last_message()
    assert anchor is not None
    forged = (f"ag:delete_yes:{agent.id}", f"ag:stop:{agent.id}", f"ag:open:{agent.id}")
    for data in (*forged, "ag:stop:../../x", f"al:restart:{agent.id}"):
        await mallory.press_callback(anchor, data)
    # Someone else's agent looks like one the user no longer has: the menu is out of date.
    await mallory.wait_for(text_contains="This menu is out of date", after=0)

    async def all_answered() -> bool:
        return len(out_of_date(mallory)) == 5

    await wait_until(all_answered)
    await mallory.press_callback(anchor, "total garbage")
    await mallory.wait_for_answer(text_contains="Agent not found")
    await mallory.send(f"/stop {agent.id}")
    await mallory.wait_for(text_contains="no agents yet")
    still = await local_manager.deployer.queries.agent(owner_id=owner.id, agent_id=agent.id)
    assert still.desired_state == "running"
    assert "Agent not found" not in str(owner.messages())


def out_of_date(user: SimUser) -> list[JsonDict]:
    return [a for a in user.callback_answers() if a.get("text") == texts.OUT_OF_DATE]


async def test_commands_are_registered_and_unknown_input_is_answered(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    await user.send("/start")
    greeting = await user.wait_for(text_contains="Hatchbot")
    assert greeting["text"].count("\n") >= 2
    await user.send("/frobnicate")
    await user.wait_for(text_contains="I don't know that one")
    await user.send_photo()
    await user.wait_for(text_contains="I don't know that one")
    await user.send("/cancel")
    await user.wait_for(text_contains="nothing to cancel")


async def test_a_flood_is_throttled_politely(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(local_manager.fake)
    for _ in range(35):
        await user.send("/help")
    await user.wait_for(text_contains="Easy there", timeout=10)
    helps = [m for m in user.messages() if m["text"].startswith("/deploy")]
    assert len(helps) <= 30


async def test_an_unexpected_error_gets_an_apology_with_a_reference(
    local_manager: Manager, telegram: FakeTelegram, caplog: object
) -> None:
    user = telegram.user(local_manager.fake)
    telegram.inject_fault("sendMessage", status=500, bot=local_manager.fake)
    await user.send("/help")
    apology = await user.wait_for(text_contains="Reference:")
    reference = apology["text"].rsplit(" ", 1)[-1]
    assert len(reference) == 8
    assert f"ref={reference}" in caplog.text  # type: ignore[attr-defined]


async def test_cancel_button_leaves_the_wizard(
    local_manager: Manager, telegram: FakeTelegram
) -> None:
    agent_bot = telegram.add_bot(username="undecided_bot")
    user = telegram.user(local_manager.fake)
    await user.send("/deploy")
    await user.press("Cancel")  # the reply keyboard's Cancel
    await user.wait_for(text_contains="Cancelled")
    await user.send("/deploy")
    await user.press("I already have a bot")
    await user.send(agent_bot.token)
    await user.wait_for(text_contains="Got it")
    await user.press("✖️ Cancel")  # the inline Cancel under the models
    cancelled = await user.wait_for(text_contains="Cancelled")
    assert "reply_markup" not in cancelled  # the models keyboard is gone
    await user.press_callback(cancelled, "md:openai:gpt-4o-mini")  # a stale tap anyway
    await user.wait_for_answer(text_contains="Agent not found")
    assert await local_manager.deployer.queries.agents_of(user.id) == []


async def test_card_restart_and_change_model(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = telegram.user(kube_manager.fake)
    await deploy_one(user, telegram, "tuned_bot")
    (agent,) = await kube_manager.deployer.queries.agents_of(user.id)
    deployment = f"agent-{agent.id}"
    await user.send("/status tuned_bot")
    await user.wait_for(text_contains="State: running")
    await user.press("Restart")
    await user.wait_for(text_contains="@tuned_bot is restarting")
    template = kube.get_object("deployments", "agents", deployment)["spec"]["template"]
    assert "kubectl.kubernetes.io/restartedAt" in template["metadata"]["annotations"]

    await user.send("/status tuned_bot")
    await user.wait_for(text_contains="State: running")
    await user.press("Change model")
    await user.wait_for(text_contains="model")
    await user.send("gpt-9000")  # not a button
    await user.wait_for(text_contains="Please pick a model with the buttons above")
    await user.press("OpenAI · gpt-4o")
    await user.wait_for(text_contains="@tuned_bot now uses gpt-4o")
    env = kube.get_object("deployments", "agents", deployment)["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    assert {"name": "LLM_MODEL", "value": "gpt-4o"} in env
    await user.send("/status tuned_bot")
    await user.wait_for(text_contains="Version: 2")


@pytest.mark.parametrize(
    "manager_env",
    [{"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "MAX_AGENTS_PER_USER": "10"}],
)
async def test_deploys_are_throttled_politely(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    user = telegram.user(kube_manager.fake)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    for i in range(5):  # the limit: five deploys in ten minutes
        await deploy_directly(kube_manager, telegram, user.id, f"batch{i}_bot")
    await fill_wizard(user, telegram, "sixth_bot")
    await user.press("Deploy")
    await user.wait_for(text_contains="That's a lot of deploys in a short time")
    assert len(await kube_manager.deployer.queries.agents_of(user.id)) == 5


def prompt_in(kube: FakeKubernetes, name: str) -> str:
    """The prompt the pod reads: the file its Deployment mounts from the agent's Secret."""
    pod = kube.get_object("deployments", "agents", name)["spec"]["template"]["spec"]
    secrets = {name: secret_strings(kube.get_object("secrets", "agents", name))}
    files = mounted_files(pod, pod["containers"][0], secrets=secrets, config_maps={})
    env = container_env(pod["containers"][0], secrets=secrets, config_maps={})
    return files[env["SYSTEM_PROMPT_FILE"]]
