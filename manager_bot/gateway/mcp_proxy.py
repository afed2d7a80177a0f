"""`/v1/mcp/{name}`: an agent's MCP servers, reached through the gateway.

An agent's pod knows only the names of its servers (MCP_SERVERS); the URL and the
owner's token stay in the database, encrypted, and only this proxy reads them. It
speaks the MCP streamable HTTP transport on both sides without understanding it:
the body and the transport's own headers pass through, a JSON answer or an event
stream streams back, and the server's header (`Authorization: Bearer <token>` or
the one the owner named) is added here. The agent's gateway credential is never
forwarded: headers are copied by name from a short list, nothing else.

Like a user's own LLM endpoint, an MCP server is a user-given URL: it is checked
with the same `EndpointGuard` before every request and connected to through its
connector (private addresses refused unless GATEWAY_ALLOWED_ENDPOINTS allows
them), redirects are refused, and answers and bodies are bounded.

Rows are cached per agent for GATEWAY_CACHE_SECONDS (read again when older), so a
removed server stops answering within that time, inside the gateway's documented
2 × GATEWAY_CACHE_SECONDS (accounts.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from manager_bot.crypto import Vault
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.endpoints import EndpointGuard, EndpointRefused, refusal_of
from manager_bot.gateway.refusals import Refused

log = logging.getLogger(__name__)

SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# Sent on from the agent's request; everything else (its Authorization first) is dropped.
FORWARDED_REQUEST_HEADERS = (
    "Content-Type",
    "Accept",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Last-Event-ID",
)
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version")
MAX_REQUEST_BYTES = 1024 * 1024  # a tool call's arguments
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # as the chat proxy; the runtime caps results itself
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # between two chunks: an idle event stream ends and is reopened
AGENT_CONCURRENCY = 8  # requests of one agent in flight at once
AGENTS_REMEMBERED = 10_000
# A name not among the cached servers is looked up again if the cache is older than this:
# a server added a moment ago must answer the pod that was restarted to use it, and an
# agent guessing names costs at most one read a second.
MISS_REREAD_SECONDS = 1.0


@dataclass(frozen=True)
class McpTarget:
    """Where one server is, and the header that carries its token (never logged)."""

    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class _Cached:
    servers: dict[str, McpTarget]
    read_at: float


def server_headers(header_name: str | None, token: str | None) -> dict[str, str]:
    """The owner's token as the server wants it: a named header, else a bearer token."""
    if not token:
        return {}
    if header_name:
        return {header_name: token}
    return {"Authorization": f"Bearer {token}"}


class McpServerBook:
    """(agent id, server name) -> McpTarget, from the database, cached per agent."""

    def __init__(
        self, *, database: Database, vault: Vault, cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._db = database
        self._vault = vault
        self._ttl = cache_seconds
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    async def find(self, agent_id: str, name: str) -> McpTarget | None:
        now = self._clock()
        cached = self._cache.get(agent_id)
        if cached is None or self._outdated(cached, name, now):
            cached = _Cached(await self._read(agent_id), now)
            self._cache[agent_id] = cached
            self._cache.move_to_end(agent_id)
            while len(self._cache) > AGENTS_REMEMBERED:
                self._cache.popitem(last=False)
        return cached.servers.get(name)

    def _outdated(self, cached: _Cached, name: str, now: float) -> bool:
        age = now - cached.read_at
        return age >= self._ttl or (name not in cached.servers and age >= MISS_REREAD_SECONDS)

    async def _read(self, agent_id: str) -> dict[str, McpTarget]:
        async with self._db.reading() as session:
            rows = await Repositories(session).mcp_servers.of(agent_id)
            return {
                row.name: McpTarget(
                    url=self._vault.decrypt(row.url_encrypted),
                    headers=server_headers(
                        row.header_name,
                        self._vault.decrypt(row.token_encrypted) if row.token_encrypted else None,
                    ),
                )
                for row in rows
            }


def refusal(status: int, code: str, message: str) -> web.Response:
    """Our own answer, shaped like the gateway's other errors."""
    return Refused(status, code, message).response()


class McpProxy:
    """Forwards one agent's MCP request to its server; the caller has authenticated it."""

    def __init__(self, *, servers: McpServerBook, guard: EndpointGuard) -> None:
        self._servers = servers
        self._guard = guard
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[str, int] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            timeout = aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=self._guard.connector(limit=0), auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request, agent_id: str) -> web.StreamResponse:
        name = request.match_info.get("name", "")
        if not SERVER_NAME.fullmatch(name):
            return refusal(404, "mcp_server_unknown", "This agent has no such MCP server.")
        target = await self._servers.find(agent_id, name)
        if target is None:  # another agent's server looks the same as none
            return refusal(404, "mcp_server_unknown", "This agent has no such MCP server.")
        try:
            self._guard.check(target.url)
        except EndpointRefused as refused:
            return refusal(502, "endpoint_refused", str(refused))
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return refusal(413, "request_too_large", "The request to the MCP server is too large.")
        body = await request.content.read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            return refusal(413, "request_too_large", "The request to the MCP server is too large.")
        if self._in_flight.get(agent_id, 0) >= AGENT_CONCURRENCY:
            return refusal(429, "agent_busy", "Too many tool requests of this agent at once.")
        self._in_flight[agent_id] = self._in_flight.get(agent_id, 0) + 1
        try:
            return await self._relay(request, target, body, agent_id=agent_id, name=name)
        finally:
            self._in_flight[agent_id] -= 1
            if not self._in_flight[agent_id]:
                del self._in_flight[agent_id]

    async def _relay(
        self, request: web.Request, target: McpTarget, body: bytes, *, agent_id: str, name: str
    ) -> web.StreamResponse:
        headers = {
            header: request.headers[header]
            for header in FORWARDED_REQUEST_HEADERS
            if header in request.headers
        }
        headers.update(target.headers)  # last: the agent cannot override the owner's token
        headers["Accept-Encoding"] = "identity"
        try:
            async with self._client().request(
                request.method, target.url, data=body or None, headers=headers,
                allow_redirects=False,
            ) as answer:  # fmt: skip
                if 300 <= answer.status < 400:
                    # Never followed: a redirect could point at an address the guard refuses.
                    return refusal(
                        502, "endpoint_refused", "The MCP server answered with a redirect."
                    )
                if answer.status in (401, 403):
                    # Not the agent's credential: the owner's token for this server.
                    log.warning("agent %s: MCP server %s refused its token", agent_id, name)
                    return refusal(
                        502, "mcp_server_refused_token", "The MCP server refused its token."
                    )
                if answer.status >= 400:
                    # Its status (404: the session is over; 405: no event stream) with our
                    # words: its own body could quote what it was sent.
                    return refusal(
                        answer.status, f"mcp_server_{answer.status}",
                        f"The MCP server answered {answer.status}.",
                    )  # fmt: skip
                return await self._stream_back(request, answer)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            refused = refusal_of(error)
            if refused is not None:
                return refusal(502, "endpoint_refused", str(refused))
            log.warning(
                "agent %s: MCP server %s unreachable: %s", agent_id, name, type(error).__name__
            )
            return refusal(502, "mcp_server_unreachable", "The MCP server cannot be reached.")

    @staticmethod
    async def _stream_back(
        request: web.Request, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Each chunk written on as it arrives (an event stream may last minutes)."""
        headers = {
            header: answer.headers[header]
            for header in FORWARDED_RESPONSE_HEADERS
            if header in answer.headers
        }
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        size = 0
        try:
            async for chunk in answer.content.iter_any():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    log.warning("an MCP answer passed %d bytes; cut", MAX_RESPONSE_BYTES)
                    break
                await response.write(chunk)
        except ConnectionError:  # the agent went away: stop reading the server
            return response
        except (aiohttp.ClientError, TimeoutError, OSError):  # the server went quiet or away
            pass  # the agent sees the stream end, as if the server had ended it
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
