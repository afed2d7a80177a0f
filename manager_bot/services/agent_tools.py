"""An agent's tools: the remote MCP servers its owner adds on the card.

Use cases: list, add, remove. A server is a streamable HTTP URL, checked as the
own-endpoint step of the wizard checks an LLM endpoint (syntax, then the guard's
refusal of private addresses), and an optional token, sent in a header the owner
may name. Both are stored encrypted; only the gateway reads them (mcp_proxy.py).
The agent's pod is given the servers' names (MCP_SERVERS), so adding or removing
one re-applies the agent through the deployer, which waits for the rollout.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from yarl import URL

from manager_bot.crypto import Vault
from manager_bot.db.models import Agent, McpServer
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.endpoints import EndpointGuard, normalize_base_url
from manager_bot.gateway.mcp_proxy import SERVER_NAME
from manager_bot.services.agent_queries import owned
from manager_bot.services.deployer import Deployer
from manager_bot.services.errors import HatchbotError

MAX_SERVERS = 5
MAX_TOKEN_CHARS = 4096
# Labels and path parts that say nothing about which server it is.
_GENERIC = frozenset({"www", "mcp", "api", "app", "server", "servers", "sse", "v1", "v2", "http"})
# "X-Api-Key: abc" names the header; a colon without the space is part of a token.
_NAMED_HEADER = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,63}):\s+(\S(?:.*\S)?)", re.DOTALL)
# Headers the transport or the connection owns: a token must not replace them.
_RESERVED_HEADERS = frozenset(
    {
        "accept", "accept-encoding", "connection", "content-length", "content-type", "host",
        "last-event-id", "mcp-protocol-version", "mcp-session-id", "te", "trailer",
        "transfer-encoding", "upgrade", "keep-alive", "proxy-authorization", "cookie",
    }
)  # fmt: skip


class ToolsProblem(enum.StrEnum):
    TOO_MANY = "too-many"  # {limit}
    DUPLICATE = "duplicate"  # {name}: this URL is there already
    GONE = "gone"  # removed meanwhile
    BAD_TOKEN = "bad-token"  # empty, too long, or not a header value
    RESERVED_HEADER = "reserved-header"  # {header}


class ToolsRefused(HatchbotError):
    """A server the agent cannot get (or lose): `problem` and its `params` are shown."""

    def __init__(self, problem: ToolsProblem, **params: str | int) -> None:
        super().__init__(f"{problem.value} {params}" if params else problem.value)
        self.problem = problem
        self.params = params


@dataclass(frozen=True)
class ServerView:
    """What the card shows of a server: never its full URL (it may hold a secret)."""

    name: str
    host: str
    has_token: bool


@dataclass(frozen=True)
class ServerToken:
    """What the server is sent: `header_name: value`, or (None) `Authorization: Bearer`."""

    value: str
    header_name: str | None = None


def parse_token(text: str) -> ServerToken:
    """A named header ("X-Api-Key: abc"), else a bearer token ("Bearer abc" or "abc")."""
    text = text.strip()
    named = _NAMED_HEADER.fullmatch(text)
    token = (
        ServerToken(named.group(2), named.group(1))
        if named
        else ServerToken(text.removeprefix("Bearer ").strip())
    )
    if token.header_name and token.header_name.lower() in _RESERVED_HEADERS:
        raise ToolsRefused(ToolsProblem.RESERVED_HEADER, header=token.header_name)
    value = token.value
    if not value or len(value) > MAX_TOKEN_CHARS or not all(" " <= c <= "~" for c in value):
        raise ToolsRefused(ToolsProblem.BAD_TOKEN, limit=MAX_TOKEN_CHARS)
    return token


def server_name(url: str, taken: set[str]) -> str:
    """A short name the agent knows the server by, from its host (mcp.notion.com ->
    notion) or, for an IP address, its path (/mcp/docs -> docs); unique per agent."""
    parsed = URL(url)
    host = (parsed.raw_host or "").lower()
    labels = [] if _is_ip(host) else host.split(".")[:-1]  # the top-level domain says little
    parts = [*labels, *reversed([part.lower() for part in parsed.parts[1:]])]
    words = [_slug(part) for part in parts if part.lower() not in _GENERIC]
    base = next((word for word in words if word), "mcp")[:28].strip("-") or "mcp"
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    assert SERVER_NAME.fullmatch(name), name
    return name


def _is_ip(host: str) -> bool:
    return host.startswith("[") or host.replace(".", "").isdigit()


def _slug(part: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-")


class AgentTools:
    """List, add and remove an agent's MCP servers; every change re-applies the agent."""

    def __init__(
        self, *, database: Database, vault: Vault, deployer: Deployer, guard: EndpointGuard,
        max_servers: int = MAX_SERVERS,
    ) -> None:  # fmt: skip
        self._db = database
        self._vault = vault
        self._deployer = deployer
        self._guard = guard
        self._max = max_servers

    @property
    def max_servers(self) -> int:
        return self._max

    async def servers(self, *, owner_id: int, agent_id: str) -> list[ServerView]:
        """The owner's agent's servers (AgentNotFound for anyone else's)."""
        async with self._db.reading() as session:
            repos = Repositories(session)
            await owned(repos, owner_id, agent_id)
            return [
                ServerView(row.name, row.host, row.token_encrypted is not None)
                for row in await repos.mcp_servers.of(agent_id)
            ]

    async def check_url(self, *, owner_id: int, agent_id: str, text: str) -> str:
        """The URL as it will be stored, or why not: EndpointRefused (shape, a private
        address), ToolsRefused (one too many, already there). Checked again at `add`."""
        url = normalize_base_url(text)
        async with self._db.reading() as session:
            repos = Repositories(session)
            await owned(repos, owner_id, agent_id)
            self._check_room(url, await repos.mcp_servers.of(agent_id))
        await self._guard.check_resolved(url)
        return url

    async def add(
        self, *, owner_id: int, agent_id: str, url: str, token: ServerToken | None
    ) -> tuple[Agent, str]:
        """Stored, then the agent re-applied with the new name; (agent, the name)."""
        url = normalize_base_url(url)
        self._guard.check(url)  # the gateway checks again on every request
        added: list[str] = []

        async def store(repos: Repositories, agent: Agent) -> str:
            rows = list(await repos.mcp_servers.of(agent.id))
            self._check_room(url, rows)
            name = server_name(url, {row.name for row in rows})
            await repos.mcp_servers.add(
                McpServer(
                    agent_id=agent.id, name=name, url_encrypted=self._vault.encrypt(url),
                    host=URL(url).host or "", header_name=token.header_name if token else None,
                    token_encrypted=self._vault.encrypt(token.value) if token else None,
                )
            )  # fmt: skip
            agent.mcp_servers = ",".join([*(row.name for row in rows), name])
            added.append(name)
            return f"added MCP server {name}"

        agent = await self._deployer.edit_and_apply(
            owner_id=owner_id, agent_id=agent_id, action="tools", edit=store
        )
        return agent, added[0]

    async def remove(self, *, owner_id: int, agent_id: str, name: str) -> Agent:
        """Removed, then the agent re-applied without it (ToolsRefused if already gone)."""

        async def drop(repos: Repositories, agent: Agent) -> str:
            if not await repos.mcp_servers.remove(agent.id, name):
                raise ToolsRefused(ToolsProblem.GONE)
            agent.mcp_servers = ",".join(row.name for row in await repos.mcp_servers.of(agent.id))
            return f"removed MCP server {name}"

        return await self._deployer.edit_and_apply(
            owner_id=owner_id, agent_id=agent_id, action="tools", edit=drop
        )

    def _check_room(self, url: str, rows: Sequence[McpServer]) -> None:
        if len(rows) >= self._max:
            raise ToolsRefused(ToolsProblem.TOO_MANY, limit=self._max)
        for row in rows:
            if self._vault.decrypt(row.url_encrypted) == url:
                raise ToolsRefused(ToolsProblem.DUPLICATE, name=row.name)
