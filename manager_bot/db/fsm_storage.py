"""aiogram FSM storage in the manager's own database, so wizards survive restarts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from manager_bot.db.group_commit import GroupCommit
from manager_bot.db.models import FsmState
from manager_bot.db.session import Database
from manager_bot.recent import Recent

# On the table, not the ORM class: these only move values (see db/repositories.py).
_TABLE = cast(Table, FsmState.__table__)
_LOAD = select(_TABLE.c.state, _TABLE.c.data).where(_TABLE.c.key == bindparam("key"))
# Rows kept in memory: a wizard's data holds a prompt of up to 4,000 characters.
CACHED_ROWS = 10_000
_KEYS = DefaultKeyBuilder(with_bot_id=True, with_business_connection_id=True, with_destiny=True)


@dataclass
class _Batch:
    """What changed inside one `SqlStorage.batch()`, by key; closed once written. Kept
    here, not read back from the cache, which may have forgotten it meanwhile."""

    storage: SqlStorage
    rows: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    open: bool = True


# Per task: a task started inside a batch (a deploy running beside the dispatcher)
# inherits the variable, but writes straight through once the batch has closed.
_BATCH: ContextVar[_Batch | None] = ContextVar("fsm_batch", default=None)


class SqlStorage(BaseStorage):
    """One row per (bot, chat, user, thread, destiny): state and JSON data.

    Write-through with an in-memory copy: every change is committed before the
    handler goes on (so a wizard survives a restart; the steps of users that end
    while another commit runs share the next one), but reads come from memory
    and writes that change nothing are skipped. Most updates only read, and the
    database has one writer (SQLite), so this is the difference between handling
    users side by side and in a queue. One manager per database (use REDIS_URL
    to share wizard state between several).
    """

    def __init__(self, database: Database, *, cached_rows: int = CACHED_ROWS) -> None:
        self._db = database
        # The most recently used rows (a user who comes back later is read anew).
        self._cache: Recent[str, tuple[str | None, str]] = Recent(cached_rows)
        insert = (
            postgresql_insert if database.engine.dialect.name == "postgresql" else sqlite_insert
        )
        upsert = insert(_TABLE)
        self._commits: GroupCommit[str, tuple[str | None, str]] = GroupCommit(self._commit)
        self._upsert = upsert.on_conflict_do_update(
            index_elements=[_TABLE.c.key],
            set_={"state": upsert.excluded.state, "data": upsert.excluded.data},
        )

    async def _load(self, key: str) -> tuple[str | None, str]:
        batch = self._open_batch()
        if batch is not None and key in batch.rows:  # not written yet
            return batch.rows[key]
        cached = self._cache.get(key)
        if cached is None:
            async with self._db.reading() as session:
                row = (await session.execute(_LOAD, {"key": key})).first()
                cached = (row.state, row.data or "{}") if row else (None, "{}")
            self._cache[key] = cached
        return cached

    async def _store(self, key: str, state: str | None, data: str) -> None:
        if await self._load(key) == (state, data):
            return
        batch = self._open_batch()
        if batch is not None:
            self._cache[key] = batch.rows[key] = (state, data)
            return
        await self._write({key: (state, data)})
        self._cache[key] = (state, data)

    async def _write(self, rows: Mapping[str, tuple[str | None, str]]) -> None:
        # Committed together with other users' steps that end meanwhile (group_commit.py).
        await self._commits.write(rows)

    async def _commit(self, rows: Mapping[str, tuple[str | None, str]]) -> None:
        # One upsert, built once, for all the rows of the group.
        parameters = [
            {"key": key, "state": state, "data": data}
            for key, (state, data) in sorted(rows.items())
        ]
        async with self._db.session() as session:
            await session.execute(self._upsert, parameters)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Changes inside are written once, together, on the way out (even after an error).

        A wizard step sets the state and the data separately; one commit instead of two
        halves the writes on the database's single writer. The in-memory copy is current
        throughout, so reads inside and outside the batch see every change at once.
        """
        if self._open_batch() is not None:
            yield  # nested: the outer batch writes
            return
        batch = _Batch(self)
        token = _BATCH.set(batch)
        try:
            yield
        finally:
            batch.open = False
            _BATCH.reset(token)
            if batch.rows:
                await self._write(batch.rows)

    def _open_batch(self) -> _Batch | None:
        """This storage's batch the current task is inside, if any."""
        batch = _BATCH.get()
        return batch if batch is not None and batch.open and batch.storage is self else None

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        value = state.state if isinstance(state, State) else state
        built = _KEYS.build(key)
        _, data = await self._load(built)
        await self._store(built, value, data)

    async def get_state(self, key: StorageKey) -> str | None:
        state, _ = await self._load(_KEYS.build(key))
        return state

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        built = _KEYS.build(key)
        state, _ = await self._load(built)
        await self._store(built, state, json.dumps(dict(data), sort_keys=True))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        _, data = await self._load(_KEYS.build(key))
        decoded: dict[str, Any] = json.loads(data)
        return decoded

    async def close(self) -> None:
        await self._commits.drained()


def build_fsm_storage(*, database: Database, redis_url: str | None) -> BaseStorage:
    """Redis when REDIS_URL is set (shared by several managers), else the database."""
    if redis_url:
        from aiogram.fsm.storage.redis import RedisStorage  # the redis client: only when used

        return RedisStorage.from_url(redis_url, key_builder=_KEYS)
    return SqlStorage(database)
