"""Health sweeps, self-healing and the notifications owners and admins get in the chat.

The fake Kubernetes API server plays the kubelet (Deployment and Pod status),
the fake agent pods answer /readyz and /metrics, and on the local backend a
real runtime process is killed. Each test runs sweeps itself (the scheduler's
own `health_check`, then its `deliver_notices`: alerts go through the outbox), so
nothing depends on timing; one test lets the scheduler run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import pytest

from manager_bot.db.models import Agent
from manager_bot.db.repositories import Repositories
from manager_bot.services.health import SweepReport
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.agent_pods import FakeAgentPods
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import wait_until


@pytest.fixture
def manager_env() -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "MAX_AGENTS_PER_USER": "3",
        "ADMIN_IDS": "900001",
    }


async def owner(manager: Manager, telegram: FakeTelegram) -> SimUser:
    user = telegram.user(manager.fake)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    return user


async def stored(manager: Manager, agent_id: str) -> Agent:
    async with manager.database.session() as session:
        agent = await Repositories(session).agents.get(agent_id)
    assert agent is not None
    return agent


async def sweep(manager: Manager) -> SweepReport | None:
    """One health sweep, then the outbox's delivery (as the scheduler's two jobs run them)."""
    report = await manager.scheduler.health_check()
    await manager.scheduler.deliver_notices()
    return report


def alerts(user: SimUser, needle: str) -> list[str]:
    return [m["text"] for m in user.messages() if needle in m.get("text", "")]


def buttons(message: dict[str, object]) -> list[str]:
    markup = message.get("reply_markup") or {}
    assert isinstance(markup, dict)
    return [b["text"] for row in markup.get("inline_keyboard", []) for b in row]


async def test_down_then_back_once_each_with_buttons(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "sick_bot")
    await sweep(kube_manager)
    assert (await stored(kube_manager, agent.id)).health == "healthy"
    assert alerts(user, "sick_bot") == []  # a healthy new agent is not news

    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=5)
    await sweep(kube_manager)
    down = await user.wait_for(text_contains="@sick_bot is down")
    # In plain words; the raw reason ("OOMKilled (restarted 5 times)") is the admins'.
    assert "it ran out of memory and was restarted 5 times" in down["text"]
    assert "OOMKilled" not in down["text"]
    assert buttons(down) == ["📜 Logs", "🔄 Restart", "🔕 Mute 24h"]
    await sweep(kube_manager)  # the state stands: no repeat
    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=6)
    await sweep(kube_manager)  # only the count changed: no repeat
    assert len(alerts(user, "is down")) == 1
    record = await stored(kube_manager, agent.id)
    assert (record.health, record.health_kind) == ("down", "crash_loop")

    kube.mark_ready("agents", f"agent-{agent.id}")
    await sweep(kube_manager)
    await user.wait_for(text_contains="✅ @sick_bot is back")
    await sweep(kube_manager)
    assert len(alerts(user, "is back")) == 1

    await user.press("Logs")  # the alert's buttons work
    await user.wait_for(text_contains="log")


async def test_missing_deployment_and_wrong_webhook_are_repaired_quietly(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "drift_bot")
    await sweep(kube_manager)
    kube.delete_object("deployments", "agents", f"agent-{agent.id}")
    bot = telegram.bot("drift_bot")
    bot.webhook = None  # someone called deleteWebhook with the agent's token
    report = await sweep(kube_manager)
    assert report is not None and agent.id in report.repaired
    assert kube.get_object("deployments", "agents", f"agent-{agent.id}") is not None
    await sweep(kube_manager)
    assert bot.webhook is not None
    assert bot.webhook.url == f"https://bots.example.com/webhook/{agent.id}"
    assert alerts(user, "drift_bot") == []
    async with kube_manager.database.session() as session:
        actions = [(e.action, e.detail) for e in await Repositories(session).audit.recent()]
    assert ("repair", "workload re-applied") in actions
    assert ("repair", "webhook set again") in actions


async def test_webhook_errors_and_llm_key_and_rate_limit_are_reported(
    kube_manager: Manager, telegram: FakeTelegram, agent_pods: FakeAgentPods
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "hooked_bot")
    name = f"agent-{agent.id}"
    await sweep(kube_manager)

    # Telegram cannot reach PUBLIC_URL: a backlog with delivery errors.
    customer = telegram.user(telegram.bot("hooked_bot"))
    await customer.send("anyone there?")
    bot = telegram.bot("hooked_bot")

    async def delivery_failed() -> bool:
        return bot.webhook is not None and bot.webhook.last_error_message is not None

    await wait_until(delivery_failed)
    await sweep(kube_manager)
    problem = await user.wait_for(text_contains="@hooked_bot has a problem")
    assert "Telegram cannot deliver messages to it" in problem["text"]
    assert "Failed to resolve host" not in problem["text"]  # Telegram's words: the log's
    bot.pending.clear()  # the gateway is back: Telegram delivered the backlog
    await sweep(kube_manager)
    await user.wait_for(text_contains="✅ @hooked_bot is back")

    agent_pods.fail_llm(name, "auth")
    await sweep(kube_manager)
    await user.wait_for(text_contains="the LLM provider rejects its API key")
    agent_pods.succeed_llm(name)
    agent_pods.fail_llm(name, "rate_limit")
    await sweep(kube_manager)
    await user.wait_for(text_contains="the LLM provider is rate-limiting it")
    agent_pods.succeed_llm(name)
    await sweep(kube_manager)
    assert len(alerts(user, "✅ @hooked_bot is back")) == 2

    agent_pods.unready.add(name)
    await sweep(kube_manager)
    await user.wait_for(text_contains="it does not answer its health check")


async def test_mute_silences_one_agent_for_a_day(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "noisy_bot")
    await sweep(kube_manager)
    kube.mark_crash_looping("agents", f"agent-{agent.id}")
    await sweep(kube_manager)
    await user.wait_for(text_contains="@noisy_bot is down")
    await user.press("Mute 24h")
    await user.wait_for(text_contains="No health alerts about @noisy_bot for 24 hours")
    kube.mark_ready("agents", f"agent-{agent.id}")
    await sweep(kube_manager)
    kube.mark_crash_looping("agents", f"agent-{agent.id}", reason="ImagePullBackOff")
    await sweep(kube_manager)
    assert alerts(user, "is back") == [] and len(alerts(user, "is down")) == 1
    record = await stored(kube_manager, agent.id)
    assert (record.health, record.health_reason) == ("down", "ImagePullBackOff (restarted 5 times)")
    await user.send("/status noisy_bot")
    await user.wait_for(text_contains="Health: 🔴 down: its program could not be downloaded")


async def test_many_changes_at_once_make_one_digest(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    agents = [
        await deploy_directly(kube_manager, telegram, user.id, f"fleet{i}_bot") for i in range(3)
    ]
    await sweep(kube_manager)
    for agent in agents:  # a node went away
        kube.mark_crash_looping("agents", f"agent-{agent.id}")
    await sweep(kube_manager)
    digest = await user.wait_for(text_contains="Several of your bots changed at once")
    for i in range(3):
        assert f"@fleet{i}_bot is down" in digest["text"]
    assert alerts(user, "is down") == [digest["text"]]


@pytest.mark.parametrize("give_up_after", [timedelta(0)])
async def test_an_agent_crashing_too_long_is_stopped_and_the_owner_told(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes, give_up_after: timedelta
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "doomed_bot")
    kube.mark_oom_killed("agents", f"agent-{agent.id}", restarts=9)
    await sweep(kube_manager)
    await user.wait_for(text_contains="@doomed_bot is down")
    await sweep(kube_manager)
    gave_up = await user.wait_for(text_contains="@doomed_bot kept crashing")
    assert "I stopped it" in gave_up["text"]
    assert buttons(gave_up) == ["📜 Logs", "▶️ Resume"]
    deployment = kube.get_object("deployments", "agents", f"agent-{agent.id}")
    assert deployment["spec"]["replicas"] == 0
    assert (await stored(kube_manager, agent.id)).desired_state == "stopped"
    report = await kube_manager.reconciler.reconcile()
    assert agent.id not in report.applied  # reconcile does not bring it back
    await sweep(kube_manager)
    assert len(alerts(user, "kept crashing")) == 1
    await user.press("Resume")
    await user.wait_for(text_contains="is running again")
    assert kube.get_object("deployments", "agents", f"agent-{agent.id}")["spec"]["replicas"] == 1


async def test_an_unreachable_cluster_is_reported_to_admins_once(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    admin = telegram.user(kube_manager.fake, user_id=900001, first_name="Admin")
    agent = await deploy_directly(kube_manager, telegram, user.id, "steady_bot")
    await sweep(kube_manager)
    kube.inject_fault(status=503, verb="list", resource="deployments", times=100)
    for _ in range(3):
        assert await sweep(kube_manager) is None
    await admin.wait_for(text_contains="Health checks cannot read the agents")
    assert len(alerts(admin, "cannot read the agents")) == 1
    assert (await stored(kube_manager, agent.id)).health == "healthy"  # not marked down
    assert alerts(user, "steady_bot") == []
    kube.clear_faults()
    await sweep(kube_manager)
    await admin.wait_for(text_contains="Health checks work again")


@pytest.mark.parametrize(
    "manager_env", [{"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "HEALTH_INTERVAL": "1"}]
)
async def test_the_scheduler_runs_sweeps_by_itself_and_stops_cleanly(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes
) -> None:
    user = await owner(kube_manager, telegram)
    agent = await deploy_directly(kube_manager, telegram, user.id, "watched_bot")
    kube.mark_crash_looping("agents", f"agent-{agent.id}")
    kube_manager.scheduler.start()
    await user.wait_for(text_contains="@watched_bot is down", timeout=15)
    await kube_manager.scheduler.stop()


@pytest.mark.parametrize("local_backend_options", [{"crash_loop_threshold": 1}])
async def test_a_killed_local_agent_is_down_then_back_after_restart(
    local_manager: Manager, telegram: FakeTelegram, tmp_path: Path
) -> None:
    user = await owner(local_manager, telegram)
    agent = await deploy_directly(local_manager, telegram, user.id, "local_bot")
    await sweep(local_manager)
    assert (await stored(local_manager, agent.id)).health == "healthy"
    state = json.loads((tmp_path / "agents" / agent.id / "state.json").read_text())
    os.kill(state["pid"], signal.SIGKILL)

    async def crash_looping() -> bool:
        seen = await local_manager.backend.observe(agent.id)
        return seen is not None and seen.state == "crash-looping"

    await wait_until(crash_looping)
    await sweep(local_manager)
    down = await user.wait_for(text_contains="@local_bot is down")
    assert "it keeps stopping" in down["text"] and "exited with code" not in down["text"]
    await user.press("Restart")
    await user.wait_for(text_contains="restart")

    async def running() -> bool:
        seen = await local_manager.backend.observe(agent.id)
        return seen is not None and seen.state == "running"

    await wait_until(running, timeout=30)
    await sweep(local_manager)
    await user.wait_for(text_contains="✅ @local_bot is back")
    customer = telegram.user(telegram.bot("local_bot"))
    await customer.send("still alive?")
    await customer.wait_for(text_contains="echo: still alive?", timeout=20)
    await asyncio.sleep(0)
