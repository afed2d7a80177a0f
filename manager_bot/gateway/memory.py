"""Agents' memory, outside their pods: `/v1/memory/chats/{chat_id}`.

A runtime keeps each chat's recent turns in its own process and writes them here
after it has replied (write-behind, never on the reply's path); it reads a chat
back only the first time it sees that chat after a start. So a restart, a rollout
or a new bot token forgets nothing.

An agent is known by its gateway credential and reaches only its own rows: the
paths name a chat, never an agent. Pods get no database and no Redis credentials.
A stopped agent may still write (its last replies are flushed while it drains); a
deleted or banned one may not. Chats idle for MEMORY_IDLE_DAYS are dropped by the
manager's sweep (`forget_idle_conversations`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from manager_bot.crypto import Vault
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.accounts import AccountBook
from manager_bot.gateway.refusals import Refused, credential_of

log = logging.getLogger(__name__)

# The runtime keeps at most HISTORY_LIMIT (≤ 500) turns and a character budget;
# these bounds only keep a misbehaving agent from filling the database.
MAX_MESSAGES = 1000
MAX_CHARS = 200_000
MAX_BODY_BYTES = 1024 * 1024
ROLES = frozenset({"user", "assistant"})
CHAT_ID_BOUND = 2**63


def parse_turns(body: Any) -> list[dict[str, str]]:
    """`{"turns": [{"role", "content"}, ...]}` as stored, or Refused saying what is wrong."""
    turns = body.get("turns") if isinstance(body, dict) else None
    if not isinstance(turns, list):
        raise Refused(400, "invalid_request", 'The body must be {"turns": [...]}.')
    if len(turns) > MAX_MESSAGES:
        raise Refused(413, "memory_too_large", f"At most {MAX_MESSAGES} messages per chat.")
    parsed: list[dict[str, str]] = []
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ROLES
            or not isinstance(turn.get("content"), str)
        ):
            raise Refused(400, "invalid_request", 'Each turn is {"role", "content"}.')
        parsed.append({"role": turn["role"], "content": turn["content"]})
    if sum(len(turn["content"]) for turn in parsed) > MAX_CHARS:
        raise Refused(413, "memory_too_large", f"At most {MAX_CHARS} characters per chat.")
    return parsed


def chat_of(request: web.Request) -> int:
    try:
        chat_id = int(request.match_info["chat_id"])
    except ValueError:
        raise Refused(400, "invalid_request", "A chat id is a number.") from None
    if not -CHAT_ID_BOUND < chat_id < CHAT_ID_BOUND:
        raise Refused(400, "invalid_request", "A chat id is a 64-bit number.")
    return chat_id


@dataclass(frozen=True)
class ConversationStore:
    """The rows behind the endpoints (table `conversations`), encrypted like every
    other secret we hold: what people tell a bot is theirs."""

    database: Database
    vault: Vault

    async def load(self, agent_id: str, chat_id: int) -> list[dict[str, str]]:
        async with self.database.reading() as session:
            stored = await Repositories(session).conversations.turns(agent_id, chat_id)
        return json.loads(self.vault.decrypt(stored)) if stored else []

    async def save(self, agent_id: str, chat_id: int, turns: list[dict[str, str]]) -> None:
        async with self.database.session() as session:
            await Repositories(session).conversations.save(
                agent_id, chat_id, self.vault.encrypt(json.dumps(turns, ensure_ascii=False))
            )

    async def forget(self, agent_id: str, chat_id: int | None = None) -> int:
        async with self.database.session() as session:
            return await Repositories(session).conversations.forget(agent_id, chat_id)

    async def forget_idle(self, before: datetime) -> int:
        async with self.database.session() as session:
            return await Repositories(session).conversations.forget_idle(before)


class MemoryApi:
    """The `/v1/memory` routes: authenticated like completions, scoped to the caller."""

    def __init__(self, *, accounts: AccountBook, store: ConversationStore) -> None:
        self._accounts = accounts
        self._store = store

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/memory/chats/{chat_id}", self._load)
        app.router.add_put("/v1/memory/chats/{chat_id}", self._save)
        app.router.add_delete("/v1/memory/chats/{chat_id}", self._forget)
        app.router.add_delete("/v1/memory/chats", self._forget_all)

    async def _agent(self, request: web.Request) -> str:
        credential = credential_of(request)
        account = await self._accounts.find(credential) if credential else None
        if account is None:
            raise Refused(401, "invalid_gateway_credential", "Unknown gateway credential.")
        if account.refusal in ("deleted", "banned"):
            raise Refused(403, "agent_disabled", f"This agent is {account.refusal}.")
        return account.agent_id

    async def _load(self, request: web.Request) -> web.Response:
        try:
            agent_id, chat_id = await self._agent(request), chat_of(request)
        except Refused as refusal:
            return refusal.response()
        turns = await self._store.load(agent_id, chat_id)
        return web.json_response({"chat_id": chat_id, "turns": turns})

    async def _save(self, request: web.Request) -> web.Response:
        try:
            agent_id, chat_id = await self._agent(request), chat_of(request)
            if (request.content_length or 0) > MAX_BODY_BYTES:
                raise Refused(413, "memory_too_large", "The body is too large.")
            try:
                body = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError):
                raise Refused(400, "invalid_request", "The body must be JSON.") from None
            turns = parse_turns(body)
        except Refused as refusal:
            return refusal.response()
        await self._store.save(agent_id, chat_id, turns)
        return web.Response(status=204)

    async def _forget(self, request: web.Request) -> web.Response:
        try:
            agent_id, chat_id = await self._agent(request), chat_of(request)
        except Refused as refusal:
            return refusal.response()
        await self._store.forget(agent_id, chat_id)
        return web.Response(status=204)

    async def _forget_all(self, request: web.Request) -> web.Response:
        try:
            agent_id = await self._agent(request)
        except Refused as refusal:
            return refusal.response()
        forgotten = await self._store.forget(agent_id)
        return web.json_response({"forgotten": forgotten})
