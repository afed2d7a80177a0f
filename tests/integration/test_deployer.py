"""The deploy path end to end, without the chat layer: database, vault, backends, webhooks."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client, config
from sqlalchemy import delete, select

from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.local import LocalBackend
from manager_bot.backends.manifests import ClusterConfig
from manager_bot.db.models import Agent, AuditEntry, DesiredState, Operation, OperationStatus
from manager_bot.db.repositories import Repositories
from manager_bot.services.deployer import DeployStep, NewAgent
from manager_bot.services.errors import (
    AgentNotFound,
    BotAlreadyUsed,
    ConfigProblem,
    DeployFailed,
    ErrorCode,
    InvalidAgentConfig,
    InvalidBotToken,
    QuotaReached,
)
from manager_bot.services.reconciler import Reconciler
from tests.fakes.databases import raw_database_bytes
from tests.fakes.kubelet_env import secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until
from tests.integration.world import OWNER, PUBLIC_URL, STRANGER, World, build_world

USER_KEY = "sk-userownkeyuserownkey0000"
LABELLED = "app.kubernetes.io/managed-by=hatchbot"
KINDS = ("secrets", "deployments", "services", "networkpolicies", "virtualservices")


def request(telegram: FakeTelegram, username: str = "helper_bot", **changes: str) -> NewAgent:
    bot = telegram.add_bot(username=username, first_name="Helper")
    fields = {
        "owner_id": OWNER,
        "bot_token": bot.token,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "system_prompt": "You are Helper.",
    }
    fields.update(changes)
    return NewAgent(**fields)  # type: ignore[arg-type]


def labelled(kube: FakeKubernetes) -> dict[str, list[str]]:
    return {
        kind: [o["metadata"]["name"] for o in kube.objects(kind, "agents", LABELLED)]
        for kind in KINDS
    }


async def test_deploy_on_kubernetes_reports_steps_and_sets_the_webhook(
    kube_world: World, kube: FakeKubernetes
) -> None:
    steps: list[DeployStep] = []

    async def progress(step: DeployStep) -> None:
        steps.append(step)

    new = request(kube_world.telegram)
    agent = await kube_world.deployer.deploy(new, progress=progress)
    assert steps == list(DeployStep)
    assert agent.observed_state == "running"
    assert labelled(kube) == {kind: [f"agent-{agent.id}"] for kind in KINDS}
    bot = kube_world.telegram.bot("helper_bot")
    assert bot.webhook is not None
    assert bot.webhook.url == f"{PUBLIC_URL}/webhook/{agent.id}"
    assert bot.webhook.allowed_updates == ["message"]
    assert bot.webhook.secret_token and len(bot.webhook.secret_token) >= 32
    deployment = kube.get_object("deployments", "agents", f"agent-{agent.id}")
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    # The gateway's Service (a process of its own on Kubernetes), not the provider.
    assert env["LLM_BASE_URL"] == kube_world.parts.settings.agents_gateway_url
    assert new.bot_token not in str(deployment)
    async with kube_world.database.session() as session:
        entries = await Repositories(session).audit.recent()
    assert [(e.action, e.outcome) for e in entries][:2] == [("deploy", "ok"), ("deploy", "started")]


async def deploy_operations(world: World) -> list[tuple[str, str | None]]:
    async with world.database.session() as session:
        rows = await session.scalars(select(Operation).where(Operation.kind == "deploy"))
        return [(row.status, row.detail) for row in rows]


async def test_the_deploy_stays_open_until_its_owner_is_told_it_is_live(
    kube_world: World,
) -> None:
    seen_while_telling: list[list[tuple[str, str | None]]] = []

    async def announce(agent: Agent) -> None:
        assert agent.observed_state == "running" and agent.profile_synced
        seen_while_telling.append(await deploy_operations(kube_world))

    agent = await kube_world.deployer.deploy(request(kube_world.telegram), announce=announce)
    assert seen_while_telling == [[(OperationStatus.RUNNING.value, None)]]
    assert await deploy_operations(kube_world) == [(OperationStatus.DONE.value, None)]
    assert agent.observed_state == "running"


async def test_a_failure_to_tell_the_owner_is_raised_and_the_live_agent_kept(
    kube_world: World, kube: FakeKubernetes
) -> None:
    async def announce(agent: Agent) -> None:
        raise ConnectionError("Telegram went away")

    with pytest.raises(ConnectionError):  # the chat apologises (handlers/deploy.py)
        await kube_world.deployer.deploy(request(kube_world.telegram), announce=announce)
    assert await deploy_operations(kube_world) == [(OperationStatus.DONE.value, "not told")]
    async with kube_world.database.session() as session:
        agents = await Repositories(session).agents.owned_by(OWNER)
    assert [(a.desired_state, a.observed_state) for a in agents] == [("running", "running")]
    assert labelled(kube) == {kind: [f"agent-{agents[0].id}"] for kind in KINDS}


@pytest.mark.parametrize("webhook_was_set", [True, False])
async def test_a_resumed_deploy_drops_the_bots_backlog_only_if_the_webhook_was_not_ours(
    kube_world: World, webhook_was_set: bool
) -> None:
    """A deploy resumed after a restart: if the run that died had set the webhook, what
    Telegram holds is for the live agent (kept); if not, it is the bot's past (dropped,
    as at a first deploy)."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    bot = kube_world.telegram.bot("helper_bot")
    if not webhook_was_set:
        bot.webhook = None  # the run died before its webhook step
    # Not delivered: the test's public URL reaches nothing, so Telegram keeps it.
    await kube_world.telegram.user(bot).send("hello, are you up?")
    assert len(bot.pending) == 1
    await kube_world.deployer.resume_deploy(agent.id, actor_id=None, begun=await begun(kube_world))
    assert bot.webhook is not None and bot.webhook.url == f"{PUBLIC_URL}/webhook/{agent.id}"
    assert len(bot.pending) == (1 if webhook_was_set else 0)


async def begun(world: World) -> datetime:
    """When the (only) deploy operation started, as Recovery passes it on."""
    async with world.database.session() as session:
        started = (await session.scalars(select(Operation.started_at))).one()
    return started if started.tzinfo else started.replace(tzinfo=UTC)


async def deploy_outcomes(world: World) -> list[str]:
    async with world.database.session() as session:
        entries = await Repositories(session).audit.recent()
    return [entry.outcome for entry in entries if entry.action == "deploy"]


@pytest.mark.parametrize("died_after_writing_it", [True, False])
async def test_a_resumed_deploy_writes_its_success_to_the_audit_log_once(
    kube_world: World, died_after_writing_it: bool
) -> None:
    """The run that died may have written "deploy ok" already (it died telling the
    user): the resumed one does not write it again; else it writes it."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    if not died_after_writing_it:
        async with kube_world.database.session() as session:
            await session.execute(delete(AuditEntry).where(AuditEntry.outcome == "ok"))
    assert await deploy_outcomes(kube_world) == (
        ["ok", "started"] if died_after_writing_it else ["started"]
    )
    await kube_world.deployer.resume_deploy(agent.id, actor_id=None, begun=await begun(kube_world))
    assert await deploy_outcomes(kube_world) == ["ok", "started"]


async def test_edit_revert_restart_stop_resume_delete(
    kube_world: World, kube: FakeKubernetes
) -> None:
    deployer = kube_world.deployer
    agent = await deployer.deploy(request(kube_world.telegram))
    name = f"agent-{agent.id}"
    generation = kube.get_object("deployments", "agents", name)["metadata"]["generation"]

    changed = await deployer.change(owner_id=OWNER, agent_id=agent.id, system_prompt="Be terse.")
    assert changed.revision == 2 and changed.system_prompt == "Be terse."
    rolled = kube.get_object("deployments", "agents", name)
    assert rolled["metadata"]["generation"] == generation + 1
    reverted = await deployer.revert(owner_id=OWNER, agent_id=agent.id)
    assert reverted.revision == 3 and reverted.system_prompt == "You are Helper."
    async with kube_world.database.session() as session:
        revisions = await Repositories(session).revisions.of(agent.id)
    assert [(r.number, r.system_prompt) for r in revisions] == [
        (1, "You are Helper."),
        (2, "Be terse."),
        (3, "You are Helper."),
    ]

    await deployer.restart(owner_id=OWNER, agent_id=agent.id)
    annotations = kube.get_object("deployments", "agents", name)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    stopped = await deployer.stop(owner_id=OWNER, agent_id=agent.id)
    assert stopped.desired_state == "stopped"
    assert kube.get_object("deployments", "agents", name)["spec"]["replicas"] == 0
    await deployer.resume(owner_id=OWNER, agent_id=agent.id)
    assert kube.get_object("deployments", "agents", name)["spec"]["replicas"] == 1

    await deployer.delete(owner_id=OWNER, agent_id=agent.id)
    assert labelled(kube) == {kind: [] for kind in KINDS}
    assert kube_world.telegram.bot("helper_bot").webhook is None
    with pytest.raises(AgentNotFound):
        await deployer.queries.agent(owner_id=OWNER, agent_id=agent.id)


async def test_other_users_and_forged_ids_get_not_found(kube_world: World) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    for call in (
        kube_world.deployer.restart,
        kube_world.deployer.stop,
        kube_world.deployer.delete,
        kube_world.deployer.queries.logs,
    ):
        with pytest.raises(AgentNotFound):
            await call(owner_id=STRANGER, agent_id=agent.id)
    with pytest.raises(AgentNotFound):
        await kube_world.deployer.stop(owner_id=OWNER, agent_id="../../etc")
    assert (
        await kube_world.deployer.queries.agent(owner_id=OWNER, agent_id=agent.id)
    ).desired_state == "running"


async def test_bad_requests_are_refused_before_anything_is_made(
    kube_world: World, kube: FakeKubernetes
) -> None:
    telegram = kube_world.telegram
    with pytest.raises(InvalidBotToken):
        await kube_world.deployer.deploy(request(telegram, bot_token="123:not-a-token"))
    revoked = request(telegram, username="revoked_bot")
    telegram.revoke(revoked.bot_token)
    with pytest.raises(InvalidBotToken):
        await kube_world.deployer.deploy(revoked)
    with pytest.raises(InvalidAgentConfig):
        await kube_world.deployer.deploy(
            request(telegram, username="a_bot", model="gpt 9 <script>")
        )
    with pytest.raises(InvalidAgentConfig) as refused:
        await kube_world.deployer.deploy(
            request(telegram, username="b_bot", provider="anthropic", model="claude-haiku-4-5")
        )
    assert refused.value.problem == ConfigProblem.KEY_NEEDED
    with pytest.raises(InvalidAgentConfig):
        await kube_world.deployer.deploy(
            request(telegram, username="c_bot", system_prompt="x" * 4001)
        )
    assert labelled(kube) == {kind: [] for kind in KINDS}

    first = request(telegram, username="one_bot")
    await kube_world.deployer.deploy(first)
    with pytest.raises(BotAlreadyUsed):
        await kube_world.deployer.deploy(first)
    with pytest.raises(BotAlreadyUsed):
        await kube_world.deployer.check_token(first.bot_token, owner_id=STRANGER)
    await kube_world.deployer.deploy(request(telegram, username="two_bot"))
    with pytest.raises(QuotaReached):
        await kube_world.deployer.deploy(request(telegram, username="three_bot"))


@pytest.mark.parametrize(
    ("fault", "resource"),
    [
        ({"status": 500}, "services"),
        ({"status": 409}, "deployments"),
        ({"status": None, "delay": 3}, "networkpolicies"),
    ],
)
async def test_a_cluster_error_mid_deploy_leaves_nothing_half_made(
    kube_world: World, kube: FakeKubernetes, fault: dict, resource: str
) -> None:
    kube.inject_fault(verb="patch", resource=resource, **fault)
    new = request(kube_world.telegram)
    with pytest.raises(DeployFailed) as caught:
        await kube_world.deployer.deploy(new)
    assert caught.value.step == DeployStep.WORKLOAD
    assert new.bot_token not in str(caught.value)
    assert labelled(kube) == {kind: [] for kind in KINDS}
    assert kube_world.telegram.bot("helper_bot").webhook is None
    async with kube_world.database.session() as session:
        repos = Repositories(session)
        (agent,) = await repos.agents.all()
        assert agent.desired_state == DesiredState.DELETED
        assert await repos.agents.count_active(OWNER) == 0
        assert (await repos.audit.recent())[0].outcome == "failed"
    # The same bot can be deployed again once the cluster is back.
    await kube_world.deployer.deploy(NewAgent(**{**new.__dict__}))


async def test_a_crash_looping_first_deploy_is_rolled_back_with_its_reason(
    kube_world: World, kube: FakeKubernetes
) -> None:
    kube.auto_ready = False
    deploying = asyncio.create_task(kube_world.deployer.deploy(request(kube_world.telegram)))

    async def created() -> bool:
        return bool(kube.objects("deployments", "agents"))

    await wait_until(created)
    name = kube.objects("deployments", "agents")[0]["metadata"]["name"]
    kube.mark_oom_killed("agents", name, restarts=4)
    with pytest.raises(DeployFailed) as caught:
        await deploying
    assert caught.value.step == DeployStep.READY
    assert "OOMKilled" in caught.value.hint
    assert labelled(kube) == {kind: [] for kind in KINDS}


async def test_reconcile_repairs_drift_and_removes_only_its_own_orphans(
    kube_world: World, kube: FakeKubernetes
) -> None:
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    kube.delete_object("deployments", "agents", f"agent-{agent.id}")
    ours, foreign = (
        orphan(kube, "orphan0001", kube_world.deployer.installation_id),
        orphan(kube, "foreign001", "0123456789abcdef"),
    )
    unstamped = orphan(kube, "unstamp001", None)
    alerts: list[str] = []

    async def alert(text: str) -> None:
        alerts.append(text)

    reconciler = Reconciler(
        database=kube_world.database, backend=kube_world.backend, deployer=kube_world.deployer,
        orphan_grace=timedelta(0), alert=alert,
    )  # fmt: skip
    report = await reconciler.reconcile()
    assert report.applied == (agent.id,) and report.removed == ("orphan0001",)
    assert kube.get_object("deployments", "agents", f"agent-{agent.id}") is not None
    assert kube.get_object("secrets", "agents", ours) is None
    for kept in (foreign, unstamped):  # not this installation's: never deleted
        assert kube.get_object("secrets", "agents", kept) is not None
    assert len(alerts) == 1 and "deleted nothing" in alerts[0]
    second = await reconciler.reconcile()
    assert second.applied == () and second.removed == ()
    assert len(alerts) == 1  # told once


async def test_an_orphan_is_removed_only_after_its_grace_period(
    kube_world: World, kube: FakeKubernetes
) -> None:
    await kube_world.deployer.deploy(request(kube_world.telegram))  # the database knows one
    name = orphan(kube, "orphan0002", kube_world.deployer.installation_id)
    now = [datetime(2026, 11, 28, 12, 0, tzinfo=UTC)]
    reconciler = Reconciler(
        database=kube_world.database, backend=kube_world.backend, deployer=kube_world.deployer,
        orphan_grace=timedelta(minutes=15), clock=lambda: now[0],
    )  # fmt: skip
    assert (await reconciler.reconcile()).removed == ()
    now[0] += timedelta(minutes=14)
    assert (await reconciler.reconcile()).removed == ()
    assert kube.get_object("secrets", "agents", name) is not None
    now[0] += timedelta(minutes=2)
    assert (await reconciler.reconcile()).removed == ("orphan0002",)


async def test_a_manager_on_an_empty_database_deletes_nothing(
    kube_world: World, kube: FakeKubernetes, sqlite_url: str, tmp_path: Path
) -> None:
    """A wrong DATABASE_URL or a lost volume: the agents it does not know are not its to
    delete, even stamped with an id (a new database makes a new installation id)."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    empty_url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    empty = await build_world(
        url=empty_url, backend=kube_world.backend, telegram=kube_world.telegram,
        llm=kube_world.llm,
    )  # fmt: skip
    alerts: list[str] = []

    async def alert(text: str) -> None:
        alerts.append(text)

    try:
        assert empty.deployer.installation_id != kube_world.deployer.installation_id
        reconciler = Reconciler(
            database=empty.database, backend=empty.backend, deployer=empty.deployer,
            orphan_grace=timedelta(0), alert=alert,
        )  # fmt: skip
        assert (await reconciler.reconcile()).removed == ()
        assert kube.get_object("deployments", "agents", f"agent-{agent.id}") is not None
        assert "knows no agent at all" in alerts[0]
    finally:
        await empty.close()


def orphan(kube: FakeKubernetes, agent_id: str, installation: str | None) -> str:
    """A Secret of an agent the database does not know, stamped with `installation`."""
    labels = {"app.kubernetes.io/managed-by": "hatchbot", "hatchbot.io/agent-id": agent_id}
    if installation:
        labels["hatchbot.io/installation"] = installation
    name = f"agent-{agent_id}"
    kube.put_object(
        "secrets", {"metadata": {"name": name, "namespace": "agents", "labels": labels}}
    )
    return name


async def test_no_secret_in_the_database_after_a_deploy(
    request_db: str, kube_world_factory
) -> None:
    world = await kube_world_factory(request_db)
    new = request(world.telegram, llm_api_key=USER_KEY)
    agent = await world.deployer.deploy(new)
    webhook_secret = world.telegram.bot("helper_bot").webhook.secret_token  # type: ignore[union-attr]
    async with world.database.session() as session:
        stored = await Repositories(session).agents.get(agent.id)
    assert stored is not None and stored.gateway_key_encrypted
    gateway_key = world.deployer.spec_for(stored).secrets.gateway_key
    assert gateway_key is not None
    await world.close()
    raw = await raw_database_bytes(world.database_url)
    assert agent.bot_username.encode() in raw
    for secret in (
        new.bot_token,
        USER_KEY,
        webhook_secret or "x" * 40,
        gateway_key.get_secret_value(),
    ):
        assert secret.encode() not in raw


@pytest.fixture(params=["sqlite", "postgres"])
def request_db(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(
        "sqlite_url" if request.param == "sqlite" else "postgres_url"
    )
    return url


@pytest.fixture
async def kube_world_factory(
    kubeconfig: Path, kube: FakeKubernetes, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> AsyncIterator[object]:
    kube.auto_ready = True
    made: list[tuple[KubernetesBackend, World]] = []

    async def make(url: str) -> World:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        backend = KubernetesBackend(
            api_client=client.ApiClient(configuration),
            cluster=ClusterConfig(
                namespace="agents", image="i", router="istio", public_url=PUBLIC_URL
            ),
        )
        world = await build_world(url=url, backend=backend, telegram=telegram, llm=openai_server)
        made.append((backend, world))
        return world

    yield make
    for backend, world in made:
        await world.close()
        await backend.close()


async def test_local_deploy_answers_through_the_fakes(
    tmp_path: Path, sqlite_url: str, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    backend = LocalBackend(data_dir=tmp_path, restart_backoff=(0.2,))
    world = await build_world(url=sqlite_url, backend=backend, telegram=telegram, llm=openai_server)
    try:
        steps: list[DeployStep] = []

        async def progress(step: DeployStep) -> None:
            steps.append(step)

        new = request(telegram)
        agent = await world.deployer.deploy(new, progress=progress)
        assert steps == [
            DeployStep.SECRET,
            DeployStep.WORKLOAD,
            DeployStep.WEBHOOK,
            DeployStep.READY,
        ]
        assert agent.observed_state == "running"
        user = telegram.user(telegram.bot("helper_bot"))
        await user.send("hello agent")
        await user.wait_for(text_contains="echo: hello agent", timeout=15)
        assert openai_server.chat_requests()[-1]["messages"][0]["content"] == "You are Helper."
        logs = await world.deployer.queries.logs(owner_id=OWNER, agent_id=agent.id, lines=50)
        assert "ready as @helper_bot" in logs and new.bot_token not in logs
        await world.deployer.delete(owner_id=OWNER, agent_id=agent.id)
        assert agent.id not in await backend.observe_all()
    finally:
        await world.close()
        await backend.shutdown_agents()


async def test_agents_from_before_the_gateway_get_a_credential_and_lose_the_provider_key(
    kube_world: World, kube: FakeKubernetes
) -> None:
    """An upgrade: an agent whose Secret still holds the platform key, with no credential."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    name = f"agent-{agent.id}"
    current = kube.get_object("secrets", "agents", name)
    assert current is not None
    kube.delete_object("secrets", "agents", name)
    old_key = base64.b64encode(b"sk-platformkeyplatformkey00").decode()
    kube.put_object(
        "secrets",
        {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {k: current["metadata"][k] for k in ("name", "namespace", "labels")},
            "data": {**current["data"], "LLM_API_KEY": old_key},
        },
    )  # fmt: skip
    async with kube_world.database.session() as session:
        stored = await Repositories(session).agents.get(agent.id)
        assert stored is not None
        stored.gateway_key_encrypted = stored.gateway_key_hash = None

    assert await kube_world.deployer.ensure_gateway_credentials() == 1
    assert await kube_world.deployer.ensure_gateway_credentials() == 0  # once
    secret = secret_strings(kube.get_object("secrets", "agents", name))
    assert secret["LLM_API_KEY"].startswith("hbgw_")
    assert "sk-platformkeyplatformkey00" not in str(kube.get_object("secrets", "agents", name))


async def test_an_edit_that_crashes_is_reported_at_once_and_stays_the_desired_state(
    kube_world: World, kube: FakeKubernetes
) -> None:
    """An edit is done when the new configuration runs: a crash-looping one fails the
    change with its code, and the new revision is kept for reconcile and a fix."""
    agent = await kube_world.deployer.deploy(request(kube_world.telegram))
    kube.auto_ready = False  # the new template's pod will not become ready by itself
    change = asyncio.create_task(
        kube_world.deployer.change(
            owner_id=OWNER, agent_id=agent.id, system_prompt="You are a pirate."
        )
    )

    async def rolled() -> bool:
        deployment = kube.get_object("deployments", "agents", f"agent-{agent.id}")
        return deployment is not None and deployment["metadata"]["generation"] > 1

    await wait_until(rolled)
    assert not change.done()  # still waiting for the rollout, not "done" on the old pod
    kube.mark_oom_killed("agents", f"agent-{agent.id}")
    with pytest.raises(DeployFailed) as failed:
        await change
    assert failed.value.code is ErrorCode.AGENT_CRASHED
    stored = await kube_world.deployer.stored(agent.id)
    assert stored is not None
    assert (stored.system_prompt, stored.revision) == ("You are a pirate.", 2)
