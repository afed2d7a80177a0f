"""Deploys that race: one user's two wizards, two users with one bot, the deploy throttle.

Each runs on SQLite, where the one writer connection queues the transactions, and on
PostgreSQL, where `race` holds every insert into `agents` back until all the deploys
wait on a lock: each has then made its checks on the same committed state (or waits
for the owner's row that guards them), as in the unluckiest real interleaving.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from manager_bot.crypto import Vault, generate_key
from manager_bot.db.migrate import upgrade
from manager_bot.db.models import Agent, DesiredState, User, new_agent_id, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database, is_sqlite
from manager_bot.services.deployer import NewAgent
from manager_bot.services.errors import BotAlreadyUsed, DeployThrottled, QuotaReached
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.waiting import wait_until
from tests.integration import test_deployer
from tests.integration.test_deployer import KINDS, OWNER, STRANGER, World, labelled, request

# The deploy tests' fixtures: a world on a fake cluster, on SQLite and on PostgreSQL.
kube_world_factory = test_deployer.kube_world_factory
request_db = test_deployer.request_db

WorldFactory = Callable[[str], Awaitable[World]]
Outcome = Agent | BaseException


async def race(world: World, *deploys: NewAgent) -> list[Outcome]:
    """Starts the deploys at once and returns what each ended in, in order."""
    attempts = asyncio.gather(
        *(world.deployer.deploy(new) for new in deploys), return_exceptions=True
    )
    if is_sqlite(world.database_url):
        return list(await attempts)
    async with world.database.engine.connect() as gate:
        # SHARE mode lets the deploys read but not insert into agents.
        await gate.execute(text("LOCK TABLE agents IN SHARE MODE"))

        async def all_waiting() -> bool:
            # Statistics are read once per transaction unless the snapshot is cleared.
            await gate.execute(text("SELECT pg_stat_clear_snapshot()"))
            waiting = await gate.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return waiting == len(deploys)

        try:
            await wait_until(all_waiting)
        finally:
            await gate.commit()  # the inserts go ahead
    return list(await attempts)


async def live_agents(world: World) -> list[Agent]:
    async with world.database.session() as session:
        return list(await Repositories(session).agents.all_active())


def only_objects_of(agents: list[Agent], kube: FakeKubernetes) -> bool:
    """The cluster holds these agents' objects and no others (none of a refused deploy)."""
    expected = {kind: sorted(f"agent-{agent.id}" for agent in agents) for kind in KINDS}
    return {kind: sorted(names) for kind, names in labelled(kube).items()} == expected


async def test_two_wizards_of_one_user_with_room_for_one_agent_make_one(
    request_db: str, kube_world_factory: WorldFactory, kube: FakeKubernetes
) -> None:
    world = await kube_world_factory(request_db)
    first = await world.deployer.deploy(request(world.telegram, username="first_bot"))
    assert world.deployer.max_agents_per_user == 2  # room for one more

    outcomes = await race(
        world,
        request(world.telegram, username="second_bot"),
        request(world.telegram, username="third_bot"),
    )

    made = [outcome for outcome in outcomes if isinstance(outcome, Agent)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Agent)]
    assert len(made) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], QuotaReached)
    live = await live_agents(world)
    assert sorted(agent.id for agent in live) == sorted([first.id, made[0].id])
    assert only_objects_of(live, kube)


async def test_two_users_deploying_one_bot_at_once_make_one_agent(
    request_db: str, kube_world_factory: WorldFactory, kube: FakeKubernetes
) -> None:
    world = await kube_world_factory(request_db)
    mine = request(world.telegram, username="shared_bot")
    theirs = dataclasses.replace(mine, owner_id=STRANGER)

    outcomes = await race(world, mine, theirs)

    made = [outcome for outcome in outcomes if isinstance(outcome, Agent)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Agent)]
    assert len(made) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], BotAlreadyUsed)
    assert str(refused[0]) == "shared_bot"
    live = await live_agents(world)
    assert [agent.id for agent in live] == [made[0].id]
    assert only_objects_of(live, kube)


async def test_a_user_one_deploy_short_of_the_throttle_gets_one_of_two_through(
    request_db: str, kube_world_factory: WorldFactory, kube: FakeKubernetes
) -> None:
    world = await kube_world_factory(request_db)
    allowed = 5  # DeployerConfig.deploys_per_window, as build_world leaves it
    async with world.database.session() as session:
        for _ in range(allowed - 1):
            await Repositories(session).audit.record(
                actor_id=OWNER, action="deploy", outcome="started"
            )
    assert await world.deployer.deploy_wait(OWNER) == 0  # the chat's check lets both in

    outcomes = await race(
        world,
        request(world.telegram, username="fifth_bot"),
        request(world.telegram, username="sixth_bot"),
    )

    made = [outcome for outcome in outcomes if isinstance(outcome, Agent)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Agent)]
    assert len(made) == 1 and len(refused) == 1, outcomes
    assert isinstance(refused[0], DeployThrottled)
    assert 0 < refused[0].retry_in <= 600
    live = await live_agents(world)
    assert [agent.id for agent in live] == [made[0].id]
    assert only_objects_of(live, kube)
    assert await world.deployer.deploy_wait(OWNER) > 0


# -- the index itself, and the data from before it ---------------------------------------


def agent_of(owner_id: int, bot_id: int, vault: Vault, **fields: object) -> Agent:
    return Agent(
        owner_id=owner_id, name="Helper", bot_id=bot_id, bot_username=f"bot{bot_id}",
        token_encrypted=vault.encrypt(f"{bot_id}:token"),
        webhook_secret_encrypted=vault.encrypt("hook-secret"), provider="openai",
        model="gpt-4o-mini", system_prompt="Be kind.", **fields,
    )  # fmt: skip


async def test_one_bot_has_one_live_agent_and_any_number_of_deleted_ones(
    request_db: str,
) -> None:
    vault = Vault([generate_key()])
    await upgrade(request_db)
    database = Database(request_db)
    try:
        async with database.session() as session:
            repos = Repositories(session)
            await repos.users.upsert(user_id=OWNER, username=None, first_name="U")
            for _ in range(2):
                await repos.agents.add(
                    agent_of(OWNER, 7, vault, desired_state=DesiredState.DELETED.value)
                )
            assert await repos.agents.add_live(agent_of(OWNER, 7, vault)) is not None
        async with database.session() as session:
            second = agent_of(OWNER, 7, vault, desired_state=DesiredState.STOPPED.value)
            assert await Repositories(session).agents.add_live(second) is None
            await session.rollback()
        async with database.session() as session:
            assert await Repositories(session).agents.count_active(OWNER) == 1
    finally:
        await database.close()


async def test_a_user_never_seen_by_the_bot_gets_a_row_to_lock(request_db: str) -> None:
    await upgrade(request_db)
    database = Database(request_db)
    try:
        async with database.session() as session:
            await Repositories(session).users.lock(4242)
        async with database.session() as session:
            user = await session.get(User, 4242)
            assert user is not None and not user.is_banned
            await Repositories(session).users.lock(4242)  # an existing row: no second
    finally:
        await database.close()


async def add_at_0004(session: AsyncSession, agent: Agent) -> Agent:
    """The agent's row as the schema of revision 0004 holds it: only the columns it had
    (the model has grown since, and the ORM would write every column it knows)."""
    agent.id = new_agent_id()
    row = {
        "id": agent.id, "owner_id": agent.owner_id, "name": agent.name,
        "bot_id": agent.bot_id, "bot_username": agent.bot_username, "managed": False,
        "token_encrypted": agent.token_encrypted,
        "webhook_secret_encrypted": agent.webhook_secret_encrypted,
        "provider": agent.provider, "model": agent.model,
        "system_prompt": agent.system_prompt, "revision": 1,
        "desired_state": agent.desired_state or DesiredState.RUNNING.value,
        "created_at": agent.created_at or utcnow(), "updated_at": utcnow(),
    }  # fmt: skip
    await session.execute(
        text(f"INSERT INTO agents ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"),
        row,
    )
    return agent


async def test_the_upgrade_keeps_the_newest_of_two_live_agents_of_one_bot(
    request_db: str,
) -> None:
    """Two deploys that raced before the index: the older agent is retired on upgrade."""
    vault = Vault([generate_key()])
    await upgrade(request_db, "0004")
    database = Database(request_db)
    now = utcnow()
    try:
        async with database.session() as session:
            for user_id in (OWNER, STRANGER):  # as 0004 holds users: the ORM knows more
                await session.execute(
                    text(
                        "INSERT INTO users (id, first_name, is_banned, blocked_bot, created_at,"
                        " last_seen_at) VALUES (:id, 'U', false, false, :now, :now)"
                    ),
                    {"id": user_id, "now": now},
                )
            older = await add_at_0004(
                session, agent_of(OWNER, 9, vault, created_at=now - timedelta(minutes=1))
            )
            newer = await add_at_0004(
                session, agent_of(STRANGER, 9, vault, created_at=now, desired_state="stopped")
            )
            other = await add_at_0004(session, agent_of(OWNER, 10, vault))
            deleted = await add_at_0004(session, agent_of(OWNER, 9, vault, desired_state="deleted"))
        await upgrade(request_db)
        async with database.session() as session:
            repos = Repositories(session)
            states = {agent.id: agent.desired_state for agent in await repos.agents.all()}
            retired = (await repos.audit.recent())[0]
        assert states == {
            older.id: "deleted", newer.id: "stopped", other.id: "running", deleted.id: "deleted",
        }  # fmt: skip
        assert (retired.actor_id, retired.action, retired.agent_id) == (None, "delete", older.id)
        assert retired.detail is not None and "bot 9" in retired.detail
    finally:
        await database.close()
