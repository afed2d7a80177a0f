"""Two managers, as two replicas run them: one PostgreSQL database, one Redis, one fake
cluster, webhook mode. Only the replica holding the Lease runs the jobs; when it goes,
the other takes over and finishes its broadcast without sending anyone a second copy.

Which replica asked the cluster for what is told by the User-Agent each one's client
sends (the fake records it); who got a broadcast is told by the fake Telegram and the
delivery rows in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from manager_bot.app import ManagerParts, assemble_manager
from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.models import (
    Agent,
    Broadcast,
    Delivery,
    DesiredState,
    Operation,
    OperationStatus,
)
from manager_bot.db.repositories import Repositories
from manager_bot.leader import LEASE_NAME, LeaseTiming, leader_elected
from manager_bot.leader_jobs import elect_and_lead
from manager_bot.services.broadcast import Content
from manager_bot.services.deployer import NewAgent
from runtime.settings_loading import load_settings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import until, wait_until
from tests.integration.test_leader import NAMESPACE, kube_backend

FAST = LeaseTiming(duration=3.0, renew_deadline=2.0, retry_period=0.25)
ADMIN = 900_000_001
USERS = [900_000_100 + n for n in range(16)]


@dataclass
class Replica:
    name: str
    parts: ManagerParts
    cleanup: contextlib.AsyncExitStack
    election: asyncio.Task[None] | None = field(default=None)

    def campaign(self) -> None:
        self.election = asyncio.create_task(elect_and_lead(self.parts, timing=FAST))

    async def stop(self) -> None:
        """The manager stopping (SIGTERM): jobs end, the Lease is handed back."""
        if self.election is not None:
            self.election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.election
            self.election = None


@pytest.fixture
async def replicas(
    kube: FakeKubernetes, kubeconfig: Path, telegram: FakeTelegram, postgres_url: str,
    redis_url: str,
) -> AsyncIterator[tuple[FakeBot, Callable[[str], Replica]]]:  # fmt: skip
    kube.put_object("namespaces", {"metadata": {"name": NAMESPACE}})
    bot = telegram.add_bot(username="hatch_bot", can_manage_bots=True)
    key = generate_key()
    settings = load_settings(
        ManagerSettings,
        {
            "MANAGER_BOT_TOKEN": bot.token, "TELEGRAM_API_URL": telegram.url,
            "DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "BACKEND": "kubernetes",
            "PUBLIC_URL": "https://bots.example.com", "MANAGER_WEBHOOK": "true",
            "MANAGER_WEBHOOK_SECRET": "replica-test-secret", "HEALTH_INTERVAL": "1",
            "K8S_MANAGER_NAMESPACE": NAMESPACE, "BROADCAST_RATE": "4",
            "OPENAI_API_KEY": "sk-platformkeyplatformkey00", "ADMIN_IDS": str(ADMIN),
        },
    )  # fmt: skip
    assert leader_elected(settings)
    made: list[Replica] = []

    async def assemble(name: str) -> Replica:
        cleanup = contextlib.AsyncExitStack()
        backend = kube_backend(kubeconfig, agent=name)
        cleanup.push_async_callback(backend.close)
        parts = await assemble_manager(
            settings, cleanup=cleanup, backend=backend, vault=Vault([key])
        )
        replica = Replica(name, parts, cleanup)
        made.append(replica)
        return replica

    replicas = {name: await assemble(name) for name in ("replica-a", "replica-b")}
    yield bot, replicas.__getitem__
    for replica in made:
        await replica.stop()
        await replica.cleanup.aclose()


def sweeps_by(kube: FakeKubernetes, agent: str, since: int = 0) -> int:
    """List calls for Deployments in the agents namespace: sweeps and reconciles."""
    return sum(
        1
        for r in kube.requests[since:]
        if r.user_agent == agent and r.verb == "list" and r.resource == "deployments"
    )


def lease_held(kube: FakeKubernetes) -> bool:
    lease = kube.get_object("leases", NAMESPACE, LEASE_NAME)
    return bool(lease and lease["spec"].get("holderIdentity"))


async def test_only_the_leader_sweeps_and_the_other_takes_over_when_it_stops(
    kube: FakeKubernetes, replicas: tuple[FakeBot, Callable[[str], Replica]]
) -> None:
    _, replica = replicas
    first, second = replica("replica-a"), replica("replica-b")
    first.campaign()
    await until(lambda: lease_held(kube), timeout=30)
    second.campaign()

    await until(lambda: sweeps_by(kube, "replica-a") >= 3, timeout=30)
    assert sweeps_by(kube, "replica-b") == 0  # serving users only: no sweep, no reconcile

    await first.stop()
    handed_over = len(kube.requests)
    await until(lambda: sweeps_by(kube, "replica-b", handed_over) >= 3, timeout=30)
    assert sweeps_by(kube, "replica-a", handed_over) == 0

    # The first replica, back in the race, leads again when the second stops: its jobs
    # start again (a new term in the same process).
    first.campaign()
    await second.stop()
    handed_back = len(kube.requests)
    await until(lambda: sweeps_by(kube, "replica-a", handed_back) >= 3, timeout=30)
    assert sweeps_by(kube, "replica-b", handed_back) == 0


@pytest.mark.parametrize("leader", ["stops", "loses the Lease"])
async def test_a_takeover_finishes_a_broadcast_and_nobody_gets_it_twice(
    kube: FakeKubernetes, replicas: tuple[FakeBot, Callable[[str], Replica]], leader: str
) -> None:
    bot, replica = replicas
    first, second = replica("replica-a"), replica("replica-b")
    async with first.parts.database.session() as session:
        for user_id in [ADMIN, *USERS]:
            await Repositories(session).users.upsert(user_id=user_id, username=None, first_name="U")
    first.campaign()
    await until(lambda: lease_held(kube), timeout=30)
    second.campaign()

    # The admin's /broadcast reached the replica that does not lead: it only records it.
    progress = await second.parts.bot.send_message(ADMIN, "📣 Sending…")
    broadcast_id, recipients = await second.parts.broadcaster.start(
        author_id=ADMIN, content=Content("Big news"), audience="all",
        progress=(ADMIN, progress.message_id),
    )  # fmt: skip
    assert recipients == len(USERS) + 1

    async def rows() -> dict[int, str]:
        async with first.parts.database.session() as session:
            found = await session.execute(
                select(Delivery.user_id, Delivery.status).where(
                    Delivery.broadcast_id == broadcast_id
                )
            )
            return {user_id: status for user_id, status in found.all()}

    async def some_sent() -> bool:
        return list((await rows()).values()).count("sent") >= 4

    async def finished() -> bool:
        async with first.parts.database.session() as session:
            stored = await session.get(Broadcast, broadcast_id)
            return stored is not None and stored.status == "done"

    await wait_until(some_sent, timeout=60)
    if leader == "stops":  # SIGTERM mid-broadcast
        await first.stop()
    else:  # another replica's write wins the Lease (then it too goes quiet)
        taken = kube.get_object("leases", NAMESPACE, LEASE_NAME)
        assert taken is not None
        taken["spec"]["holderIdentity"] = "intruder_ffff"
        kube.replace_object("leases", taken)
        # The leader steps down at its next renew; a lease duration later a replica
        # (either) takes the Lease over from the silent intruder.
        await until(lambda: holder(kube) not in ("", "intruder_ffff"), timeout=30)
    sent_before = list((await rows()).values()).count("sent")
    await wait_until(finished, timeout=60)

    final = await rows()
    copies = {
        user_id: sum("Big news" in str(m.get("text", "")) for m in bot.messages_in(user_id))
        for user_id in final
    }
    assert all(count <= 1 for count in copies.values()), copies  # nobody twice
    assert set(final.values()) <= {"sent", "uncertain"}  # nobody left out
    assert all(copies[user_id] == 1 for user_id, status in final.items() if status == "sent")
    assert list(final.values()).count("sent") > sent_before  # the new leader carried on
    uncertain = list(final.values()).count("uncertain")
    if leader == "stops":  # it let its sends in flight finish: nothing is left uncertain
        assert uncertain == 0
    else:  # cut off at once: at most the sends in flight (the workers) are uncertain
        assert uncertain <= 4


def holder(kube: FakeKubernetes) -> str:
    lease = kube.get_object("leases", NAMESPACE, LEASE_NAME)
    return str((lease or {}).get("spec", {}).get("holderIdentity") or "")


async def test_a_new_leader_finishes_only_the_operations_nobody_is_carrying_out(
    kube: FakeKubernetes, replicas: tuple[FakeBot, Callable[[str], Replica]]
) -> None:
    """A replica that died left an operation running; another replica, alive, is in the
    middle of one (it holds its agent's lock), and a third just began a deploy."""
    bot, replica = replicas
    first, second = replica("replica-a"), replica("replica-b")
    owner, vault = USERS[0], first.parts.vault
    async with first.parts.database.session() as session:
        repos = Repositories(session)
        await repos.users.upsert(user_id=owner, username=None, first_name="Owner")
        agents = []
        for n in (1, 2):
            agent = Agent(
                owner_id=owner, name=f"Helper {n}", bot_id=7000000010 + n,
                bot_username=f"helper{n}_bot", token_encrypted=vault.encrypt("t"),
                webhook_secret_encrypted=vault.encrypt("s"), provider="openai",
                model="gpt-4o-mini", system_prompt="Hi", revision=1,
                desired_state=DesiredState.DELETED.value,
            )  # fmt: skip
            await repos.agents.add(agent)
            agents.append(agent.id)
        dead = await repos.operations.start(
            kind="stop", agent_id=agents[0], actor_id=owner, chat_id=owner
        )
        live = await repos.operations.start(
            kind="restart", agent_id=agents[1], actor_id=owner, chat_id=owner
        )
        beginning = await repos.operations.start(
            kind="deploy", agent_id=None, actor_id=owner, chat_id=owner
        )

    async def statuses() -> dict[int, str]:
        async with first.parts.database.session() as session:
            found = await session.execute(select(Operation.id, Operation.status))
            return dict(found.all())

    async with second.parts.deployer.locks.hold(agents[1]):  # the live replica's restart
        first.campaign()

        async def dead_one_finished() -> bool:
            return (await statuses())[dead] == "done"

        await wait_until(dead_one_finished, timeout=60)
        assert (await statuses())[live] == "running"  # untouched while its replica acts
        async with second.parts.database.session() as session:
            await Repositories(session).operations.finish(live, OperationStatus.DONE)
    await until(lambda: any("“stop” of @helper1_bot" in t for t in bot_texts(bot, owner)))
    await first.stop()  # the leader's catch-up is over once it stops

    final = await statuses()
    assert final == {dead: "done", live: "done", beginning: "running"}
    told = bot_texts(bot, owner)
    assert not [t for t in told if "helper2_bot" in t]  # the live one's user hears nothing new
    assert not [t for t in told if "interrupted" in t and "deploy" in t.lower()]


def bot_texts(bot: FakeBot, chat_id: int) -> list[str]:
    return [str(m.get("text", "")) for m in bot.messages_in(chat_id)]


async def test_a_deploy_holds_its_agents_lock_from_the_moment_the_agent_exists(
    kube: FakeKubernetes, telegram: FakeTelegram, postgres_url: str,
    replicas: tuple[FakeBot, Callable[[str], Replica]],
) -> None:  # fmt: skip
    """A new leader finishes a deploy left running only if it gets the agent's lock
    (finish_abandoned): were the lock taken after the agent's row is written, a leader
    landing in between would finish a live deploy a second time."""
    _, replica = replicas
    kube.auto_ready = True
    deployer = replica("replica-b").parts.deployer
    agent_bot = telegram.add_bot(username="locked_bot", first_name="Locked")
    async with replica("replica-b").parts.database.session() as session:
        await Repositories(session).users.upsert(user_id=USERS[1], username=None, first_name="U")
    request = NewAgent(
        owner_id=USERS[1], bot_token=agent_bot.token, provider="openai",
        model="gpt-4o-mini", system_prompt="You are locked.",
    )  # fmt: skip
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    watcher = await asyncpg.connect(dsn)
    try:
        deploy = asyncio.create_task(deployer.deploy(request))
        agent_id = None
        while agent_id is None and not deploy.done():
            agent_id = await watcher.fetchval(
                "SELECT id FROM agents WHERE bot_id = $1", agent_bot.id
            )
        assert agent_id is not None, deploy
        # The instant its row is visible, the agent's lock is someone else's.
        taken = await watcher.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", agent_id)
        if taken:
            await watcher.execute("SELECT pg_advisory_unlock(hashtext($1))", agent_id)
        assert not taken
        agent = await deploy
        assert agent.id == agent_id
    finally:
        await watcher.close()
