"""`/v1/mcp/{name}` over real HTTP: an agent reaches its owner's MCP servers through the
gateway, which adds the owner's token and never passes the agent's credential on.

Agents and their servers are rows made as the manager makes them (encrypted with the
vault); the gateway is the real one; the MCP server is the fake on loopback; clients are
plain HTTP speaking JSON-RPC, and the official MCP client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from manager_bot.config import PlatformSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.migrate import upgrade
from manager_bot.db.models import DesiredState, McpServer
from manager_bot.db.repositories import Repositories
from manager_bot.db.secrets import rotate_secrets
from manager_bot.db.session import Database
from manager_bot.gateway.mcp_proxy import McpServerBook
from manager_bot.gateway.process import build_gateway
from manager_bot.gateway.server import Gateway
from runtime.settings_loading import load_settings
from tests.fakes.mcp_server import SEARCH_DOCS_TEXT, FakeMcpServer
from tests.integration.gateway_platform import agent_row

OWNER = 4343
OWNER_TOKEN = "owner-token-for-docs-0123456789"
ACCEPT = "application/json, text/event-stream"


@dataclass
class Tools:
    database: Database
    vault: Vault
    gateway: Gateway
    server: FakeMcpServer
    key: str  # the vault's Fernet key

    async def agent(self, **fields: Any) -> tuple[str, str]:
        """An agent row with a fresh gateway credential: (agent id, credential)."""
        agent, credential = await agent_row(self.database, self.vault, owner_id=OWNER, **fields)
        return agent.id, credential

    async def add_server(
        self, agent_id: str, name: str, url: str, *, token: str | None = None,
        header_name: str | None = None,
    ) -> None:  # fmt: skip
        async with self.database.session() as session:
            await Repositories(session).mcp_servers.add(
                McpServer(
                    agent_id=agent_id, name=name, url_encrypted=self.vault.encrypt(url),
                    host="127.0.0.1", header_name=header_name,
                    token_encrypted=self.vault.encrypt(token) if token else None,
                )
            )  # fmt: skip

    def url(self, name: str) -> str:
        return f"{self.gateway.url}/mcp/{name}"


async def start_tools(sqlite_url: str, server: FakeMcpServer, env: dict[str, str]) -> Tools:
    settings = load_settings(
        PlatformSettings, {"DATABASE_URL": sqlite_url, "GATEWAY_CACHE_SECONDS": "0", **env}
    )
    await upgrade(sqlite_url)
    database, key = Database(sqlite_url), generate_key()
    vault = Vault([key])
    gateway = build_gateway(settings=settings, database=database, vault=vault)
    await gateway.start("127.0.0.1", 0)
    return Tools(database, vault, gateway, server, key)


@pytest.fixture(params=[False, True], ids=["json", "sse"])
async def tools(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[Tools]:
    """The operator allows the fake's loopback address (as an in-cluster server would be)."""
    async with FakeMcpServer(sse=request.param) as server:
        host = server.root_url.split("/")[2]
        platform = await start_tools(sqlite_url, server, {"GATEWAY_ALLOWED_ENDPOINTS": host})
        try:
            yield platform
        finally:
            await platform.gateway.stop()
            await platform.database.close()


async def rpc(
    http: aiohttp.ClientSession, url: str, credential: str, method: str, *,
    params: dict[str, Any] | None = None, session: str | None = None, ident: int | None = 1,
) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """One JSON-RPC message as an MCP client posts it: (status, headers, the reply)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if ident is not None:
        message["id"] = ident
    headers = {"Authorization": f"Bearer {credential}", "Accept": ACCEPT,
               "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip
    if session:
        headers["Mcp-Session-Id"] = session
    async with http.post(url, json=message, headers=headers) as response:
        raw = await response.text()
        return response.status, dict(response.headers), reply_of(raw, response.content_type)


def reply_of(raw: str, content_type: str) -> Any:
    if not raw:
        return None
    if content_type == "text/event-stream":
        data = [line[5:] for line in raw.splitlines() if line.startswith("data:")]
        return json.loads(data[-1])
    return json.loads(raw)


async def handshake(http: aiohttp.ClientSession, url: str, credential: str) -> str:
    status, headers, reply = await rpc(
        http, url, credential, "initialize",
        params={"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"}},
    )  # fmt: skip
    assert status == 200, reply
    assert reply["result"]["serverInfo"]["name"] == "fake-mcp"
    session = headers["Mcp-Session-Id"]  # passed back to the agent
    status, _, _ = await rpc(
        http, url, credential, "notifications/initialized", session=session, ident=None
    )
    assert status == 202
    return session


async def test_tools_list_and_call_pass_through_with_the_owners_token(tools: Tools) -> None:
    agent_id, credential = await tools.agent()
    docs = tools.server.named("docs")
    await tools.add_server(agent_id, "docs", docs.url, token=OWNER_TOKEN)
    async with aiohttp.ClientSession() as http:
        session = await handshake(http, tools.url("docs"), credential)
        status, _, listed = await rpc(http, tools.url("docs"), credential, "tools/list",
                                      session=session, ident=2)  # fmt: skip
        assert status == 200
        assert "search_docs" in [tool["name"] for tool in listed["result"]["tools"]]
        status, _, called = await rpc(
            http, tools.url("docs"), credential, "tools/call", session=session, ident=3,
            params={"name": "search_docs", "arguments": {"query": "deploy"}},
        )  # fmt: skip
        assert status == 200
        assert SEARCH_DOCS_TEXT in called["result"]["content"][0]["text"]
        async with http.delete(
            tools.url("docs"),
            headers={"Authorization": f"Bearer {credential}", "Mcp-Session-Id": session},
        ) as ended:
            assert ended.status == 200
    assert session in docs.ended_sessions
    assert [call.name for call in docs.calls] == ["search_docs"]
    seen = docs.requests
    assert [request.method for request in seen] == [
        "initialize", "notifications/initialized", "tools/list", "tools/call", "DELETE",
    ]  # fmt: skip
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {OWNER_TOKEN}"
        assert all(credential not in value for value in request.headers.values())
    assert seen[2].headers["Mcp-Session-Id"] == session
    assert seen[2].headers["MCP-Protocol-Version"] == "2025-06-18"


async def test_the_official_client_works_through_the_gateway(tools: Tools) -> None:
    """As the runtime will use it: the MCP SDK's streamable HTTP client, our credential."""
    agent_id, credential = await tools.agent()
    search = tools.server.named("search")
    await tools.add_server(agent_id, "search", search.url, token="k", header_name="X-Api-Key")
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"}) as http,
        streamable_http_client(tools.url("search"), http_client=http) as (read, write),
        ClientSession(read, write) as client,
    ):
        await client.initialize()
        listed = await client.list_tools()
        result = await client.call_tool("search_docs", {"query": "cards"})
    assert "search_docs" in [tool.name for tool in listed.tools]
    assert SEARCH_DOCS_TEXT in result.content[0].text  # type: ignore[union-attr]
    for request in search.requests:
        assert request.headers["X-Api-Key"] == "k"
        assert "Authorization" not in request.headers  # the agent's credential stays here


async def test_who_may_use_a_server(tools: Tools) -> None:
    """Unknown credentials get 401, a stopped agent 403; an agent cannot name another
    agent's server (it looks the same as no server at all)."""
    owner_id, owner_credential = await tools.agent()
    other_id, other_credential = await tools.agent()
    docs = tools.server.named("docs")
    await tools.add_server(owner_id, "docs", docs.url, token=OWNER_TOKEN)
    async with aiohttp.ClientSession() as http:
        status, _, body = await rpc(http, tools.url("docs"), "hbgw_" + "x" * 40, "tools/list")
        assert (status, body["error"]["code"]) == (401, "invalid_gateway_credential")
        status, _, body = await rpc(http, tools.url("docs"), other_credential, "initialize")
        assert (status, body["error"]["code"]) == (404, "mcp_server_unknown")
        status, _, body = await rpc(http, tools.url("DOCS"), owner_credential, "initialize")
        assert (status, body["error"]["code"]) == (404, "mcp_server_unknown")
        stopped_id, stopped = await tools.agent(desired_state=DesiredState.STOPPED.value)
        await tools.add_server(stopped_id, "docs", docs.url, token=OWNER_TOKEN)
        status, _, body = await rpc(http, tools.url("docs"), stopped, "initialize")
        assert (status, body["error"]["code"]) == (403, "agent_disabled")
    assert docs.requests == []
    assert other_id != owner_id


async def test_the_servers_failures_are_the_gateways_words(tools: Tools) -> None:
    """A server that refuses the owner's token, or is down: our code, not its body."""
    agent_id, credential = await tools.agent()
    docs = tools.server.named("docs")
    await tools.add_server(agent_id, "docs", docs.url, token=OWNER_TOKEN)
    docs.available = False
    async with aiohttp.ClientSession() as http:
        status, _, body = await rpc(http, tools.url("docs"), credential, "initialize")
        assert (status, body["error"]["code"]) == (503, "mcp_server_503")
        await tools.server.stop()
        status, _, body = await rpc(http, tools.url("docs"), credential, "initialize")
        assert (status, body["error"]["code"]) == (502, "mcp_server_unreachable")


async def test_a_private_address_is_refused_unless_the_operator_allows_it(
    sqlite_url: str,
) -> None:
    async with FakeMcpServer() as server:
        platform = await start_tools(sqlite_url, server, {})
        try:
            agent_id, credential = await platform.agent()
            await platform.add_server(agent_id, "docs", server.named("docs").url, token="t")
            await platform.add_server(agent_id, "meta", "http://169.254.169.254/mcp")
            async with aiohttp.ClientSession() as http:
                for name in ("docs", "meta"):
                    status, _, body = await rpc(http, platform.url(name), credential, "initialize")
                    assert (status, body["error"]["code"]) == (502, "endpoint_refused"), name
                    assert "127.0.0.1" not in body["error"]["message"] or name == "docs"
        finally:
            await platform.gateway.stop()
            await platform.database.close()
        assert server.named("docs").requests == []


async def test_rotate_keys_reencrypts_the_servers_url_and_token(sqlite_url: str) -> None:
    """`rotate-keys` covers MCP servers: after it, the old key can be dropped."""
    async with FakeMcpServer() as server:
        platform = await start_tools(sqlite_url, server, {})
        try:
            agent_id, _ = await platform.agent()
            url = server.named("docs").url
            await platform.add_server(agent_id, "docs", url, token=OWNER_TOKEN)
            new = generate_key()
            rotated = await rotate_secrets(platform.database, Vault([new, platform.key]))
            assert rotated == 5  # the agent's three (no key of its own), the URL, the token
            only_new = Vault([new])
            async with platform.database.session() as session:
                (row,) = await Repositories(session).mcp_servers.of(agent_id)
            assert only_new.decrypt(row.url_encrypted) == url
            assert only_new.decrypt(row.token_encrypted or "") == OWNER_TOKEN
        finally:
            await platform.gateway.stop()
            await platform.database.close()


async def test_servers_are_cached_per_agent_and_a_new_name_is_read_again(
    sqlite_url: str,
) -> None:
    """A removed server answers for at most GATEWAY_CACHE_SECONDS; a server added a
    moment ago is found as soon as the restarted pod asks (one read a second at most)."""
    async with FakeMcpServer() as server:
        platform = await start_tools(sqlite_url, server, {})
        now = [1000.0]
        book = McpServerBook(
            database=platform.database, vault=platform.vault, cache_seconds=60,
            clock=lambda: now[0],
        )  # fmt: skip
        try:
            agent_id, _ = await platform.agent()
            await platform.add_server(agent_id, "docs", server.named("docs").url, token="t")
            docs = await book.find(agent_id, "docs")
            assert docs is not None and docs.headers == {"Authorization": "Bearer t"}
            await platform.add_server(agent_id, "search", server.named("search").url)
            assert await book.find(agent_id, "search") is None  # read this very second
            now[0] += 1
            assert await book.find(agent_id, "search") is not None
            async with platform.database.session() as session:
                assert await Repositories(session).mcp_servers.remove(agent_id, "docs")
            now[0] += 30
            assert await book.find(agent_id, "docs") == docs  # cached, as documented
            now[0] += 30
            assert await book.find(agent_id, "docs") is None
        finally:
            await platform.gateway.stop()
            await platform.database.close()
