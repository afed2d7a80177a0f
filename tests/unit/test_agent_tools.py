"""What the owner types for an MCP server: the name the agent knows it by, the token's
header, and what the pod is given (its names, nothing secret)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.local import runtime_settings
from manager_bot.backends.manifests import runtime_env
from manager_bot.gateway.mcp_proxy import SERVER_NAME, server_headers
from manager_bot.services.agent_tools import (
    ServerToken,
    ToolsProblem,
    ToolsRefused,
    parse_token,
    server_name,
)


@pytest.mark.parametrize(
    ("url", "taken", "name"),
    [
        ("https://mcp.notion.com/mcp", set(), "notion"),
        ("https://api.github.example.com/v1/mcp", set(), "github"),
        ("https://docs.example.com/mcp", {"docs"}, "docs-2"),
        ("https://docs.example.com/mcp", {"docs", "docs-2"}, "docs-3"),
        ("http://127.0.0.1:8080/mcp/search", set(), "search"),
        ("http://127.0.0.1:8080/mcp", set(), "mcp"),
        ("http://[2001:db8::1]/sse", set(), "mcp"),
        ("https://" + "x" * 60 + ".example.com/mcp", set(), "x" * 28),
        ("https://My_Server.example.com/", set(), "my-server"),
    ],
)
def test_a_server_is_named_after_its_host_or_path(url: str, taken: set[str], name: str) -> None:
    assert server_name(url, taken) == name
    assert SERVER_NAME.fullmatch(name)


@pytest.mark.parametrize(
    ("typed", "token"),
    [
        ("abc123", ServerToken("abc123")),
        ("  Bearer abc123 \n", ServerToken("abc123")),
        ("X-Api-Key: abc123", ServerToken("abc123", "X-Api-Key")),
        ("Authorization: Basic dXNlcjpwYXNz", ServerToken("Basic dXNlcjpwYXNz", "Authorization")),
        ("user:pass", ServerToken("user:pass")),  # no space after the colon: a token
    ],
)
def test_a_token_is_a_bearer_token_or_a_named_header(typed: str, token: ServerToken) -> None:
    assert parse_token(typed) == token


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("Host: evil.example.com", ToolsProblem.RESERVED_HEADER),
        ("Mcp-Session-Id: 1", ToolsProblem.RESERVED_HEADER),
        ("", ToolsProblem.BAD_TOKEN),
        ("two\nlines", ToolsProblem.BAD_TOKEN),
        ("x" * 5000, ToolsProblem.BAD_TOKEN),
        ("tökén", ToolsProblem.BAD_TOKEN),
    ],
)
def test_what_cannot_be_a_header_is_refused(typed: str, problem: ToolsProblem) -> None:
    with pytest.raises(ToolsRefused) as refused:
        parse_token(typed)
    assert refused.value.problem is problem


def test_the_token_goes_in_its_header() -> None:
    assert server_headers(None, "t") == {"Authorization": "Bearer t"}
    assert server_headers("X-Api-Key", "t") == {"X-Api-Key": "t"}
    assert server_headers(None, None) == {}


def spec(servers: tuple[str, ...]) -> AgentSpec:
    secrets = AgentSecrets(bot_token=SecretStr("1:x"), webhook_secret=SecretStr("w"))
    return AgentSpec(
        agent_id="a123456789", secrets=secrets, llm_model="m", system_prompt="p",
        mcp_servers=servers,
    )  # fmt: skip


def test_the_pod_gets_the_names_only_and_nothing_without_tools() -> None:
    env = {item["name"]: item.get("value") for item in runtime_env(spec(("docs", "search")))}
    assert env["MCP_SERVERS"] == "docs,search"
    assert "MCP_SERVERS" not in {item["name"] for item in runtime_env(spec(()))}
    local = runtime_settings(
        spec(("docs",)), prompt_file=Path("p"), log_file=Path("l"), log_max_bytes=1,
        log_backups=1,
    )  # fmt: skip
    assert local["MCP_SERVERS"] == "docs"
