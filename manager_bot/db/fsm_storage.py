"""aiogram FSM storage in the manager's own database, so wizards survive restarts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.redis import RedisStorage

from manager_bot.db.models import FsmState
from manager_bot.db.session import Database

_KEYS = DefaultKeyBuilder(with_bot_id=True, with_business_connection_id=True, with_destiny=True)


class SqlStorage(BaseStorage):
    """One row per (bot, chat, user, thread, destiny): state and JSON data."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        value = state.state if isinstance(state, State) else state
        async with self._db.session() as session:
            row = await session.get(FsmState, _KEYS.build(key))
            if row is None:
                if value is None:
                    return
                session.add(FsmState(key=_KEYS.build(key), state=value, data="{}"))
            else:
                row.state = value

    async def get_state(self, key: StorageKey) -> str | None:
        async with self._db.session() as session:
            row = await session.get(FsmState, _KEYS.build(key))
            return row.state if row else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        encoded = json.dumps(dict(data))
        async with self._db.session() as session:
            row = await session.get(FsmState, _KEYS.build(key))
            if row is None:
                session.add(FsmState(key=_KEYS.build(key), state=None, data=encoded))
            else:
                row.data = encoded

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        async with self._db.session() as session:
            row = await session.get(FsmState, _KEYS.build(key))
            if row is None:
                return {}
            data: dict[str, Any] = json.loads(row.data or "{}")
            return data

    async def close(self) -> None:
        return None


def build_fsm_storage(*, database: Database, redis_url: str | None) -> BaseStorage:
    """Redis when REDIS_URL is set (shared by several managers), else the database."""
    if redis_url:
        return RedisStorage.from_url(redis_url, key_builder=_KEYS)
    return SqlStorage(database)
