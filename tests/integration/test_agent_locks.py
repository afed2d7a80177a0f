"""Agent locks across replicas: two `AgentLocks` on one PostgreSQL database are two
managers' processes. Whether a lock is waited for is read from PostgreSQL's own
`pg_locks`, not guessed from time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from manager_bot.services.agent_locks import AgentLocks
from tests.fakes.waiting import until, wait_until


@pytest.fixture
async def two_replicas(postgres_url: str) -> AsyncIterator[tuple[AgentLocks, AgentLocks]]:
    first, second = AgentLocks(shared_url=postgres_url), AgentLocks(shared_url=postgres_url)
    yield first, second
    await first.close()
    await second.close()


async def advisory_waiters(postgres_url: str) -> int:
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    finally:
        await connection.close()


async def test_a_second_replica_waits_for_the_first_on_the_same_agent(
    two_replicas: tuple[AgentLocks, AgentLocks], postgres_url: str
) -> None:
    first, second = two_replicas
    events: list[str] = []
    release = asyncio.Event()

    async def restart_on_first() -> None:  # a user's Restart on one replica
        async with first.hold("agent00001"):
            events.append("restart begins")
            await release.wait()
            events.append("restart ends")

    async def repair_on_second() -> None:  # the leader's health repair on the other
        async with second.hold("agent00001"):
            events.append("repair")

    restart = asyncio.create_task(restart_on_first())
    await until(lambda: "restart begins" in events)
    repair = asyncio.create_task(repair_on_second())
    await wait_until(lambda: _waiting(postgres_url))
    assert events == ["restart begins"]  # the repair waits in PostgreSQL, not done
    release.set()
    await asyncio.gather(restart, repair)
    assert events == ["restart begins", "restart ends", "repair"]
    assert await advisory_waiters(postgres_url) == 0


async def test_other_agents_are_not_held_up(two_replicas: tuple[AgentLocks, AgentLocks]) -> None:
    first, second = two_replicas
    async with first.hold("agent00001"):
        async with second.hold("agent00002"):  # would hang if the locks were not per agent
            pass
        assert first.shared and second.shared


async def test_a_holder_that_is_cancelled_lets_go(
    two_replicas: tuple[AgentLocks, AgentLocks],
) -> None:
    first, second = two_replicas
    held = asyncio.Event()

    async def holder() -> None:
        async with first.hold("agent00001"):
            held.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await held.wait()
    task.cancel()  # e.g. a replica whose leadership was lost mid-repair
    await asyncio.gather(task, return_exceptions=True)
    async with second.hold("agent00001"):
        pass


async def test_one_process_keeps_its_in_process_locks() -> None:
    locks = AgentLocks()
    assert not locks.shared
    order: list[int] = []

    async def act(n: int) -> None:
        async with locks.hold("agent00001"):
            order.append(n)
            await asyncio.sleep(0)
            order.append(n)

    await asyncio.gather(act(1), act(2))
    assert order == [1, 1, 2, 2]
    await locks.close()


async def _waiting(postgres_url: str) -> bool:
    return await advisory_waiters(postgres_url) >= 1
