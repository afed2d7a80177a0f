"""Desired state wins: whatever a Kubernetes error left half-done, reconcile finishes.

Each test injects the fault on the real HTTP path (the fake API server), checks that
the database already holds the user's intent, then runs one reconcile and checks
what the cluster holds.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from manager_bot.backends.local import LocalBackend
from manager_bot.backends.manifests import CONFIG_HASH
from manager_bot.db.models import DesiredState
from manager_bot.db.repositories import Repositories
from manager_bot.services.errors import DeployFailed
from manager_bot.services.reconciler import Reconciler
from tests.fakes.kubelet_env import secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.test_deployer import OWNER, World, build_world, request


def replicas(kube: FakeKubernetes, agent_id: str) -> int:
    deployment = kube.get_object("deployments", "agents", f"agent-{agent_id}")
    assert deployment is not None
    count: int = deployment["spec"]["replicas"]
    return count


def config_of(kube: FakeKubernetes, agent_id: str) -> str:
    deployment = kube.get_object("deployments", "agents", f"agent-{agent_id}")
    assert deployment is not None
    value: str = deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
    return value


async def test_a_stop_that_failed_in_the_cluster_is_finished_by_reconcile(
    kube_world: World, kube: FakeKubernetes
) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    kube.inject_fault(verb="patch", resource="deployments", status=500)
    with pytest.raises(DeployFailed):
        await kube_world.deployer.stop(owner_id=OWNER, agent_id=agent.id)
    stored = await kube_world.deployer.stored(agent.id)
    assert stored is not None and stored.desired_state == DesiredState.STOPPED
    assert replicas(kube, agent.id) == 1  # still running: the user's Stop did not land

    report = await kube_world.reconciler.reconcile()
    assert report.applied == (agent.id,)
    assert replicas(kube, agent.id) == 0
    assert (await kube_world.reconciler.reconcile()).applied == ()  # converged: nothing more


async def test_a_banned_users_agents_are_scaled_down_even_after_a_cluster_error(
    kube_world: World, kube: FakeKubernetes
) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    kube.inject_fault(verb="patch", resource="deployments", status=503)
    assert await kube_world.deployer.stop_all_of(OWNER, actor_id=1) == 1
    assert replicas(kube, agent.id) == 1
    await kube_world.reconciler.reconcile()
    assert replicas(kube, agent.id) == 0


async def test_an_edit_whose_rollout_failed_is_rolled_out_by_reconcile(
    kube_world: World, kube: FakeKubernetes
) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    before = config_of(kube, agent.id)
    kube.inject_fault(verb="patch", resource="secrets", status=500)
    with pytest.raises(DeployFailed):
        await kube_world.deployer.change(
            owner_id=OWNER, agent_id=agent.id, system_prompt="Be terse."
        )
    stored = await kube_world.deployer.stored(agent.id)
    assert stored is not None and (stored.revision, stored.system_prompt) == (2, "Be terse.")
    assert config_of(kube, agent.id) == before  # the pod still runs revision 1

    assert (await kube_world.reconciler.reconcile()).applied == (agent.id,)
    assert config_of(kube, agent.id) != before
    secret = secret_strings(kube.get_object("secrets", "agents", f"agent-{agent.id}") or {})
    assert secret["system-prompt"] == "Be terse."


async def test_a_rotated_token_is_stored_before_anything_can_fail(
    kube_world: World, kube: FakeKubernetes
) -> None:
    """Telegram revoked the old token already: losing the new one would kill the bot."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    new_token = "7000000999:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
    kube_world.telegram.inject_fault("getMe", status=502, times=5)  # Telegram glitches
    kube.inject_fault(verb="patch", resource="secrets", status=500)  # and so does the cluster
    with pytest.raises(DeployFailed):
        await kube_world.deployer.rotate_token(
            owner_id=OWNER, agent_id=agent.id, new_token=new_token
        )
    stored = await kube_world.deployer.stored(agent.id)
    assert stored is not None
    assert kube_world.deployer.spec_for(stored).secrets.bot_token.get_secret_value() == new_token
    await kube_world.reconciler.reconcile()
    secret = secret_strings(kube.get_object("secrets", "agents", f"agent-{agent.id}") or {})
    assert secret["BOT_TOKEN"] == new_token


async def test_a_repair_never_restarts_what_the_user_has_just_stopped(
    kube_world: World, kube: FakeKubernetes
) -> None:
    """The health sweep read the agent as running; the user stopped it before the repair.
    The repair reads the row again under the agent's lock and leaves it stopped."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    swept = await kube_world.backend.observe(agent.id)  # what the sweep saw
    kube.delete_object("deployments", "agents", f"agent-{agent.id}")  # drift it would repair
    await kube_world.deployer.stop(owner_id=OWNER, agent_id=agent.id)
    await kube_world.reconciler.converge(agent.id, None)
    assert replicas(kube, agent.id) == 0  # re-created, but stopped as the row now says
    assert swept is not None and swept.state.value == "running"


async def test_a_deleted_agent_whose_objects_survived_is_removed_by_reconcile(
    kube_world: World, kube: FakeKubernetes
) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    kube.inject_fault(verb="delete", resource="deployments", status=500)
    await kube_world.deployer.delete(owner_id=OWNER, agent_id=agent.id)
    assert kube.get_object("deployments", "agents", f"agent-{agent.id}") is not None
    async with kube_world.database.session() as session:
        row = await Repositories(session).agents.get(agent.id)
    assert row is not None and row.desired_state == DesiredState.DELETED
    assert (await kube_world.reconciler.reconcile()).removed == (agent.id,)
    assert kube.get_object("deployments", "agents", f"agent-{agent.id}") is None


async def test_a_local_manager_on_an_empty_database_deletes_nothing(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    """The same data/ directory, a lost database: the running agent is not the new
    database's to delete (its stamp names the other installation)."""
    first_backend = LocalBackend(data_dir=tmp_path, restart_backoff=(0.2,))
    first = await build_world(
        url=f"sqlite+aiosqlite:///{tmp_path / 'first.db'}", backend=first_backend,
        telegram=telegram, llm=openai_server,
    )  # fmt: skip
    second_backend = LocalBackend(data_dir=tmp_path, restart_backoff=(0.2,))
    try:
        agent = await first.deployer.deploy(request(telegram))
        await first_backend.close()  # the first manager goes away; its agent runs on
        second = await build_world(  # adopts the running agent, as a manager starting does
            url=f"sqlite+aiosqlite:///{tmp_path / 'second.db'}", backend=second_backend,
            telegram=telegram, llm=openai_server,
        )  # fmt: skip
        try:
            alerts: list[str] = []

            async def alert(text: str) -> None:
                alerts.append(text)

            reconciler = Reconciler(
                database=second.database, backend=second_backend, deployer=second.deployer,
                orphan_grace=timedelta(0), alert=alert,
            )  # fmt: skip
            assert (await reconciler.reconcile()).removed == ()
            assert (tmp_path / "agents" / agent.id).is_dir()
            seen = await second_backend.observe(agent.id)
            assert seen is not None and seen.state.value in ("running", "starting")
            assert alerts and "deleted nothing" in alerts[0]
        finally:
            await second.close()
    finally:
        await second_backend.shutdown_agents()
        await first_backend.shutdown_agents()
        await first.close()


async def test_a_progress_report_that_fails_never_stops_a_deploy(kube_world: World) -> None:
    """A 429 on a progress edit (or any error showing progress) is skipped, not fatal."""

    async def progress(step: object) -> None:
        raise RuntimeError("Too Many Requests: retry after 5")

    agent = await kube_world.deployer.deploy(request(kube_world.telegram), progress=progress)
    assert agent.observed_state == "running"
    async with kube_world.database.session() as session:
        (operation,) = await Repositories(session).operations.all_of(agent.id)
    assert (operation.kind, operation.status) == ("deploy", "done")


async def test_a_deleted_bot_stops_pointing_at_us_despite_a_429(kube_world: World) -> None:
    """Its owner may poll the bot elsewhere next: a webhook left set would stop that."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    bot = kube_world.telegram.bot("helper_bot")
    assert bot.webhook is not None
    kube_world.telegram.inject_fault("deleteWebhook", status=429, retry_after=1, bot=bot)
    await kube_world.deployer.delete(owner_id=OWNER, agent_id=agent.id)
    assert bot.webhook is None or not bot.webhook.url
