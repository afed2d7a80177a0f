"""🔧 Tools on the agent card: an owner adds a remote MCP server (URL, then a token whose
message is deleted at once) and removes it; the agent's pod learns the servers' names
and nothing else, the database holds the token encrypted, garbage changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from manager_bot.db.models import McpServer
from manager_bot.db.repositories import Repositories
from manager_bot.keyboards import CardAction, ToolRemove
from tests.e2e.conftest import Manager, deploy_directly
from tests.fakes.kubelet_env import container_env, secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.mcp_server import SEARCH_DOCS_TEXT, FakeMcpServer
from tests.fakes.openai_api import FakeOpenAI, ToolCalls
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import JsonDict, SimUser

SERVER_TOKEN = "docs-server-token-0123456789abcdef"


@pytest.fixture
async def mcp() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer() as server:
        yield server


@pytest.fixture
def manager_env(mcp: FakeMcpServer) -> dict[str, str]:
    """The fake stands for a server the operator allows (loopback is private otherwise)."""
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
        "GATEWAY_ALLOWED_ENDPOINTS": mcp.root_url.split("/")[2],
    }


def buttons(message: JsonDict) -> list[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [b["text"] for row in rows for b in row]


def pod_env(kube: FakeKubernetes, agent_id: str) -> dict[str, str]:
    """The agent's container environment as the kubelet builds it (its Deployment)."""
    name = f"agent-{agent_id}"
    deployment = kube.get_object("deployments", "agents", name)
    secret = kube.get_object("secrets", "agents", name)
    assert deployment is not None and secret is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return container_env(container, secrets={name: secret_strings(secret)}, config_maps={})


async def servers_of(manager: Manager, agent_id: str) -> list[McpServer]:
    async with manager.database.session() as session:
        return list(await Repositories(session).mcp_servers.of(agent_id))


async def open_tools(owner: SimUser, username: str) -> JsonDict:
    await owner.send(f"/status {username}")
    card = await owner.wait_for(text_contains="State:")
    assert "🔧 Tools" in buttons(card)
    await owner.press("🔧 Tools")
    return await owner.wait_for(text_contains=f"Tools of @{username}")


async def test_an_owner_adds_an_mcp_server_with_a_token_and_removes_it(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes, mcp: FakeMcpServer
) -> None:
    owner = telegram.user(kube_manager.fake)
    agent = await deploy_directly(kube_manager, telegram, owner.id, "tooly_bot")
    assert "MCP_SERVERS" not in pod_env(kube, agent.id)  # no tools: the pod as before
    screen = await open_tools(owner, "tooly_bot")
    assert "No MCP servers yet." in screen["text"]
    assert buttons(screen) == ["➕ Add MCP server", "⬅️ Back"]

    await owner.press("Add MCP server")
    await owner.wait_for(text_contains="Send the URL of the MCP server")
    await owner.send_photo()
    await owner.wait_for(text_contains="Send the server's URL as text")
    await owner.send("https://" + "a" * 10_000 + ".com/mcp")
    await owner.wait_for(text_contains="can't use that URL")
    await owner.send("http://169.254.169.254/mcp")  # the cloud's metadata service
    await owner.wait_for(text_contains="can't use that URL")
    given = await owner.send(mcp.named("docs").url)
    await owner.wait_for(text_contains="Does the server need a token?")
    assert given["message_id"] in owner.deleted_own_messages()  # a URL may hold a secret
    pasted = await owner.send(f"Bearer {SERVER_TOKEN}")
    added = await owner.wait_for(text_contains="can use the tools of docs now", timeout=30)

    assert pasted["message_id"] in owner.deleted_own_messages()
    assert buttons(added) == ["➖ Remove docs", "➕ Add MCP server", "⬅️ Back"]
    assert "docs · 127.0.0.1 · 🔑 token" in added["text"]
    (server,) = await servers_of(kube_manager, agent.id)
    assert (server.name, server.header_name) == ("docs", None)
    assert SERVER_TOKEN not in (server.token_encrypted or "")
    assert kube_manager.vault.decrypt(server.token_encrypted or "") == SERVER_TOKEN
    assert kube_manager.vault.decrypt(server.url_encrypted) == mcp.named("docs").url
    env = pod_env(kube, agent.id)
    assert env["MCP_SERVERS"] == "docs"
    # The pod holds the servers' names only: no URL, no token.
    assert all(SERVER_TOKEN not in value and "/mcp/docs" not in value for value in env.values())
    assert SERVER_TOKEN not in str(owner.messages())

    # The same server twice is refused, and nothing changes.
    await owner.press("Add MCP server")
    await owner.wait_for(text_contains="Send the URL of the MCP server")
    await owner.send(mcp.named("docs").url + "/")
    await owner.wait_for(text_contains="already added, as docs")
    await owner.send("/cancel")
    await owner.wait_for(text_contains="Cancelled")
    assert len(await servers_of(kube_manager, agent.id)) == 1

    # Another user's forged button, naming this agent: out of date, nothing removed.
    stranger = telegram.user(kube_manager.fake, first_name="Eve")
    await stranger.send("/agents")
    their_list = await stranger.wait_for(text_contains="")
    forged = ToolRemove(action=CardAction.TOOLS_REMOVE, agent_id=agent.id, server="docs")
    await stranger.press_callback(their_list, forged.pack())
    await stranger.wait_for_answer(text_contains="out of date")
    assert len(await servers_of(kube_manager, agent.id)) == 1

    await owner.send("/status tooly_bot")
    await owner.wait_for(text_contains="State:")
    await owner.press("🔧 Tools")
    await owner.press("➖ Remove docs")
    removed = await owner.wait_for(text_contains="docs is removed", timeout=30)
    assert "No MCP servers yet." in removed["text"]
    assert await servers_of(kube_manager, agent.id) == []
    assert "MCP_SERVERS" not in pod_env(kube, agent.id)


async def test_a_named_header_and_no_token(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes, mcp: FakeMcpServer
) -> None:
    """A header the owner names ("X-Api-Key: value"), and a server without a token."""
    owner = telegram.user(kube_manager.fake)
    agent = await deploy_directly(kube_manager, telegram, owner.id, "keyed_bot")
    await open_tools(owner, "keyed_bot")
    await owner.press("Add MCP server")
    await owner.send(mcp.named("search").url)
    await owner.wait_for(text_contains="Does the server need a token?")
    refused = await owner.send("Host: evil.example.com")
    await owner.wait_for(text_contains="can't carry a token")
    await owner.send(f"X-Api-Key: {SERVER_TOKEN}")
    await owner.wait_for(text_contains="can use the tools of search now", timeout=30)
    assert refused["message_id"] in owner.deleted_own_messages()

    await owner.press("Add MCP server")
    await owner.send(mcp.named("open").url)
    await owner.wait_for(text_contains="Does the server need a token?")
    await owner.press("No token needed")
    await owner.wait_for(text_contains="can use the tools of open now", timeout=30)

    keyed, open_server = await servers_of(kube_manager, agent.id)
    assert keyed.header_name == "X-Api-Key"
    assert kube_manager.vault.decrypt(keyed.token_encrypted or "") == SERVER_TOKEN
    assert open_server.token_encrypted is None
    assert pod_env(kube, agent.id)["MCP_SERVERS"] == "search,open"


def quote_the_tool(messages: list[JsonDict]) -> str:
    """The model's final words: it quotes the last tool result it got."""
    results = [m["content"] for m in messages if m.get("role") == "tool"]
    return f"Tool said: {results[-1][:200]}" if results else "No tool was used."


async def test_the_agent_uses_the_servers_tools_through_the_gateway(
    local_manager: Manager, telegram: FakeTelegram, openai_server: FakeOpenAI,
    mcp: FakeMcpServer,
) -> None:  # fmt: skip
    """All the way: added on the card, the local agent restarts with MCP_SERVERS, calls
    the tool through the gateway, and the server sees the owner's token only."""
    owner = telegram.user(local_manager.fake)
    await deploy_directly(local_manager, telegram, owner.id, "helper_bot")
    await open_tools(owner, "helper_bot")
    await owner.press("Add MCP server")
    await owner.send(mcp.named("docs").url)
    await owner.wait_for(text_contains="Does the server need a token?")
    await owner.send(SERVER_TOKEN)
    await owner.wait_for(text_contains="can use the tools of docs now", timeout=40)

    openai_server.script_tool_turns(ToolCalls.of("search_docs", {"query": "deploy"}))
    openai_server.reply_with(quote_the_tool)
    friend = telegram.user(telegram.bot("helper_bot"))
    await friend.send("How do I deploy an agent?")
    answer = await friend.wait_for(text_contains="Tool said:", timeout=30)

    assert SEARCH_DOCS_TEXT in answer["text"]
    docs = mcp.named("docs")
    assert [call.name for call in docs.calls] == ["search_docs"]
    assert {request.headers.get("Authorization") for request in docs.requests} == {
        f"Bearer {SERVER_TOKEN}"
    }
