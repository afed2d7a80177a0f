"""Durable state on SQLite and real PostgreSQL: migrations, repositories, FSM storage."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from aiogram.fsm.storage.base import StorageKey
from sqlalchemy import Engine, event, inspect, text

from manager_bot.crypto import Vault, generate_key
from manager_bot.db.fsm_storage import SqlStorage, build_fsm_storage
from manager_bot.db.migrate import downgrade, schema_differences, upgrade
from manager_bot.db.models import Agent, DesiredState
from manager_bot.db.repositories import Repositories
from manager_bot.db.secrets import rotate_secrets
from manager_bot.db.session import Database
from tests.fakes.databases import raw_database_bytes

TABLES = {
    "users", "agents", "agent_revisions", "audit_log", "fsm_states", "broadcasts",
    "broadcast_deliveries", "agent_usage", "notices", "installation", "operations",
    "agent_mcp_servers", "conversations",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


async def tables(url: str) -> set[str]:
    database = Database(url)
    try:
        async with database.engine.connect() as connection:
            names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await database.close()
    return set(names) - {"alembic_version"}


async def test_migrations_up_down_up_and_models_match(database_url: str) -> None:
    await upgrade(database_url)
    assert await tables(database_url) == TABLES
    assert await schema_differences(database_url) == []
    await downgrade(database_url)
    assert await tables(database_url) == set()
    await upgrade(database_url)
    assert await tables(database_url) == TABLES
    assert await schema_differences(database_url) == []


@pytest.mark.postgres
async def test_replicas_migrating_a_new_database_at_once_all_succeed(postgres_url: str) -> None:
    """Three replicas' first start on a new database: one migrates, the others wait."""
    env = {**os.environ, "DATABASE_URL": postgres_url}
    command = (sys.executable, "-m", "manager_bot", "migrate")
    output = asyncio.subprocess.PIPE
    processes = [
        await asyncio.create_subprocess_exec(
            *command, env=env, stdout=output, stderr=asyncio.subprocess.STDOUT
        )
        for _ in range(3)
    ]
    outputs = [(await process.communicate())[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert await tables(postgres_url) == TABLES
    assert await schema_differences(postgres_url) == []


async def seeded(url: str, vault: Vault) -> Database:
    await upgrade(url)
    database = Database(url)
    async with database.session() as session:
        repos = Repositories(session)
        await repos.users.upsert(user_id=1, username="alice", first_name="Alice")
        await repos.users.upsert(user_id=2, username="bob", first_name="Bob")
        agent = await repos.agents.add(
            Agent(
                owner_id=1,
                name="Helper",
                bot_id=555,
                bot_username="helper_bot",
                token_encrypted=vault.encrypt("555:token"),
                webhook_secret_encrypted=vault.encrypt("hook-secret"),
                provider="openai",
                model="gpt-4o-mini",
                llm_api_key_encrypted=vault.encrypt("sk-user-key"),
                system_prompt="Be kind.",
            )
        )
        await repos.revisions.record(agent, created_by=1)
        await repos.audit.record(actor_id=1, action="deploy", agent_id=agent.id, outcome="ok")
    return database


async def test_repositories_respect_ownership(database_url: str) -> None:
    vault = Vault([generate_key()])
    database = await seeded(database_url, vault)
    try:
        async with database.session() as session:
            repos = Repositories(session)
            (agent,) = await repos.agents.owned_by(1)
            assert await repos.agents.get_owned(1, agent.id) is not None
            assert await repos.agents.get_owned(2, agent.id) is None  # someone else's
            assert await repos.agents.get_owned(1, "forged") is None
            assert await repos.agents.count_active(1) == 1
            assert await repos.agents.bot_in_use(555)
            agent.desired_state = DesiredState.DELETED.value
        async with database.session() as session:
            repos = Repositories(session)
            assert await repos.agents.get_owned(1, agent.id) is None
            assert not await repos.agents.bot_in_use(555)
            assert await repos.agents.count_active(1) == 0
            assert [e.action for e in await repos.audit.recent()] == ["deploy"]
            assert [r.number for r in await repos.revisions.of(agent.id)] == [1]
    finally:
        await database.close()


async def test_a_user_seen_again_is_refreshed_in_one_statement(database_url: str) -> None:
    """Users.upsert: made when first seen; seen again, their names and last visit are
    refreshed, a blocked bot is unblocked (they wrote to us), and what Telegram left out
    (their app's language) or they picked (/language) is kept."""
    vault = Vault([generate_key()])
    database = await seeded(database_url, vault)
    try:
        async with database.session() as session:
            repos = Repositories(session)
            await repos.users.upsert(
                user_id=3, username="carol", first_name="Carol", telegram_language="de"
            )
            await repos.users.set_language(3, "ru")
            await repos.users.mark_blocked(3)
        async with database.reading() as session:
            first = await Repositories(session).users.get(3)
            assert first is not None and first.blocked_bot and first.language == "ru"
            first_seen, made = first.last_seen_at, first.created_at
        async with database.session() as session:
            await Repositories(session).users.upsert(
                user_id=3, username=None, first_name="Caro", telegram_language=None
            )
        async with database.reading() as session:
            repos = Repositories(session)
            again = await repos.users.get(3)
            assert again is not None
            assert (again.username, again.first_name) == (None, "Caro")
            assert (again.telegram_language, again.language) == ("de", "ru")
            assert not again.blocked_bot and not again.is_banned
            assert again.last_seen_at >= first_seen
            assert again.created_at == made
            assert await repos.users.language(3) == "ru"
            assert await repos.users.language(404) is None
        async with database.session() as session:
            (agent,) = await Repositories(session).agents.owned_by(1)
            await Repositories(session).agents.write(
                agent.id, observed_state="running", profile_synced=True
            )
        async with database.reading() as session:
            written = await Repositories(session).agents.get(agent.id)
            assert written is not None
            assert (written.observed_state, written.profile_synced) == ("running", True)
            assert written.name == "Helper"  # only the columns given
    finally:
        await database.close()


async def test_fsm_state_survives_a_restart(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    key = StorageKey(bot_id=1, chat_id=2, user_id=2)
    first = Database(sqlite_url)
    storage = build_fsm_storage(database=first, redis_url=None)
    assert isinstance(storage, SqlStorage)
    await storage.set_state(key, "Deploy:prompt")
    await storage.set_data(key, {"model": "gpt-4o-mini"})
    await first.close()
    second = Database(sqlite_url)  # a new manager process
    storage = SqlStorage(second)
    assert await storage.get_state(key) == "Deploy:prompt"
    assert await storage.update_data(key, {"step": 3}) == {"model": "gpt-4o-mini", "step": 3}
    await storage.set_state(key, None)
    assert await storage.get_state(key) is None
    await second.close()


async def test_fsm_batch_writes_once_on_the_way_out_even_after_an_error(
    database_url: str,
) -> None:
    await upgrade(database_url)
    key = StorageKey(bot_id=1, chat_id=3, user_id=3)
    database, elsewhere = Database(database_url), Database(database_url)
    storage = SqlStorage(database)
    try:
        with pytest.raises(RuntimeError):
            async with storage.batch():
                await storage.set_state(key, "Deploy:model")
                async with storage.batch():  # nested: still the outer one's write
                    await storage.update_data(key, {"username": "demo_bot"})
                # This manager sees its own change at once; the database has none yet.
                assert await storage.get_state(key) == "Deploy:model"
                assert await SqlStorage(elsewhere).get_state(key) is None
                raise RuntimeError("the handler failed after changing the state")
        stored = SqlStorage(elsewhere)  # another manager process, empty cache
        assert await stored.get_state(key) == "Deploy:model"
        assert await stored.get_data(key) == {"username": "demo_bot"}
        await storage.set_state(key, None)  # outside a batch: written at once
        assert await SqlStorage(elsewhere).get_state(key) is None
    finally:
        await database.close()
        await elsewhere.close()


async def test_reading_sessions_see_commits_and_refuse_writes_on_sqlite(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        async with database.reading() as session:  # opened before the write below
            assert await Repositories(session).users.get(7) is None
        async with database.session() as session:
            await Repositories(session).users.upsert(user_id=7, username="u7", first_name="U")
        async with database.reading() as session:
            assert (await Repositories(session).users.get(7)) is not None
        with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
            async with database.reading() as session:
                await session.execute(text("DELETE FROM users"))
        async with database.reading() as session:
            assert (await Repositories(session).users.get(7)) is not None
    finally:
        await database.close()


async def test_fsm_state_in_redis(redis_url: str, sqlite_url: str) -> None:
    database = Database(sqlite_url)
    key = StorageKey(bot_id=1, chat_id=2, user_id=2)
    storage = build_fsm_storage(database=database, redis_url=redis_url)
    try:
        await storage.set_state(key, "Deploy:model")
        await storage.set_data(key, {"a": 1})
        await storage.close()
        again = build_fsm_storage(database=database, redis_url=redis_url)
        assert await again.get_state(key) == "Deploy:model"
        assert await again.get_data(key) == {"a": 1}
        await again.close()
    finally:
        await database.close()


async def test_rotate_keys_reencrypts_everything(sqlite_url: str) -> None:
    old, new = generate_key(), generate_key()
    database = await seeded(sqlite_url, Vault([old]))
    try:
        assert await rotate_secrets(database, Vault([new, old])) == 4
        only_new = Vault([new])
        async with database.session() as session:
            repos = Repositories(session)
            (agent,) = await repos.agents.all()
            assert only_new.decrypt(agent.token_encrypted) == "555:token"
            assert only_new.decrypt(agent.webhook_secret_encrypted) == "hook-secret"
            (revision,) = await repos.revisions.all()
            assert only_new.decrypt(revision.llm_api_key_encrypted or "") == "sk-user-key"
    finally:
        await database.close()


async def test_no_plaintext_secret_at_rest(database_url: str) -> None:
    database = await seeded(database_url, Vault([generate_key()]))
    await database.close()
    raw = await raw_database_bytes(database_url)
    assert b"helper_bot" in raw  # the dump is real...
    for secret in (b"555:token", b"hook-secret", b"sk-user-key"):
        assert secret not in raw  # ...and holds no secret in the clear


async def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        with pytest.raises(Exception, match="FOREIGN KEY"):
            async with database.session() as session:
                await session.execute(
                    text(
                        "INSERT INTO agents (id, owner_id, name, bot_id, bot_username, managed, "
                        "token_encrypted, webhook_secret_encrypted, provider, model, system_prompt, "
                        "revision, desired_state, created_at, updated_at) VALUES ('x', 99, 'n', 1, "
                        "'u', 0, 't', 's', 'p', 'm', 'sp', 1, 'running', '2026-01-01', '2026-01-01')"
                    )
                )
    finally:
        await database.close()


async def test_fsm_rows_forgotten_by_a_full_cache_are_read_back_even_mid_batch(
    database_url: str,
) -> None:
    """The in-memory copy keeps only the newest rows (it would otherwise hold every user
    ever seen): a forgotten row is read from the database, and a change inside a batch,
    not yet written, is never lost or read stale when the cache forgets it."""
    await upgrade(database_url)
    keys = [StorageKey(bot_id=1, chat_id=100 + n, user_id=100 + n) for n in range(5)]
    database, elsewhere = Database(database_url), Database(database_url)
    storage = SqlStorage(database, cached_rows=2)
    try:
        for number, key in enumerate(keys):
            await storage.set_state(key, f"Deploy:step{number}")
        assert [await storage.get_state(key) for key in keys] == [
            f"Deploy:step{number}" for number in range(5)
        ]
        async with storage.batch():
            await storage.set_state(keys[0], "Deploy:confirm")
            await storage.update_data(keys[0], {"username": "kept_bot"})
            for other in keys[1:]:  # the batch's row leaves the two-row cache
                await storage.get_state(other)
            assert await storage.get_state(keys[0]) == "Deploy:confirm"
            assert await storage.get_data(keys[0]) == {"username": "kept_bot"}
            assert await SqlStorage(elsewhere).get_state(keys[0]) == "Deploy:step0"
        stored = SqlStorage(elsewhere)
        assert await stored.get_state(keys[0]) == "Deploy:confirm"
        assert await stored.get_data(keys[0]) == {"username": "kept_bot"}
    finally:
        await database.close()
        await elsewhere.close()


async def test_wizard_steps_ending_together_share_a_commit_and_all_are_stored(
    database_url: str,
) -> None:
    """Many users' steps ending at once: each user's write is stored before their step
    returns, and the steps that ended while a commit ran share the next one."""
    await upgrade(database_url)
    keys = [StorageKey(bot_id=1, chat_id=200 + n, user_id=200 + n) for n in range(40)]
    database, elsewhere = Database(database_url), Database(database_url)
    storage = SqlStorage(database)
    commits = 0

    def counted(*_: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(Engine, "commit", counted)  # whichever engine the database writes with

    async def step(number: int, key: StorageKey) -> None:
        async with storage.batch():
            await storage.set_state(key, "Deploy:prompt")
            await storage.update_data(key, {"step": number})
        stored = SqlStorage(elsewhere)  # another process, reading the database
        assert await stored.get_data(key) == {"step": number}

    try:
        await asyncio.gather(*(step(number, key) for number, key in enumerate(keys)))
        assert 0 < commits < len(keys)
        stored = SqlStorage(elsewhere)
        for number, key in enumerate(keys):
            assert await stored.get_state(key) == "Deploy:prompt"
            assert await stored.get_data(key) == {"step": number}
    finally:
        event.remove(Engine, "commit", counted)
        await storage.close()
        await database.close()
        await elsewhere.close()
