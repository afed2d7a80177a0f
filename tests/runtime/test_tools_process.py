"""`python -m runtime` with and without MCP servers: `mcp` is loaded only for tools.

`python -X importtime` lists every module the process imported (on stderr),
so the check needs no hook in the runtime itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.mcp_server import SEARCH_DOCS_TEXT, FakeMcpServer
from tests.fakes.openai_api import FakeOpenAI, ToolCalls
from tests.fakes.telegram_api import FakeTelegram
from tests.runtime.conftest import agent_env, reaped, set_webhook, terminate, wait_ready


async def run_traced(
    telegram: FakeTelegram, openai_server: FakeOpenAI, log: Path, **overrides: str
) -> set[str]:
    """Start the runtime process, answer one message, stop it; the modules it imported."""
    bot = telegram.add_bot(username="agent_bot")
    env = agent_env(telegram, openai_server, bot, **overrides)
    with log.open("w") as output:  # a file, not a pipe: the trace is longer than its buffer
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "runtime",
            env={"PATH": os.environ.get("PATH", ""), **env},
            stdout=output,
            stderr=output,
        )
        async with reaped(process):
            await wait_ready(env["PORT"])
            await set_webhook(telegram, bot, f"http://127.0.0.1:{env['PORT']}/webhook/a1b2c3")
            user = telegram.user(bot)
            await user.send("hello")
            await user.wait_for(text_contains="hello", timeout=20)
            assert await terminate(process) == 0
    trace = await asyncio.to_thread(log.read_text)
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in trace.splitlines()
        if line.startswith("import time:")
    }


def loads_mcp(modules: set[str]) -> bool:
    return any(name == "mcp" or name.startswith("mcp.") for name in modules)


async def test_without_servers_the_runtime_never_imports_mcp(
    telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    modules = await run_traced(telegram, openai_server, tmp_path / "trace.log")
    assert "runtime.tools" in modules  # the trace covers the runtime's own modules
    assert not loads_mcp(modules)
    assert "tools" not in openai_server.chat_requests()[-1]


async def test_with_a_server_the_process_answers_with_its_tools(
    telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    openai_server.script_tool_turns(ToolCalls.of("search_docs", {"query": "hello"}))
    openai_server.reply_with(lambda messages: f"hello, {messages[-1]['content']}")
    async with FakeMcpServer() as mcp:
        docs = mcp.named("docs")
        modules = await run_traced(
            telegram,
            openai_server,
            tmp_path / "trace.log",
            MCP_SERVERS="docs",
            MCP_BASE_URL=mcp.url,
        )
    assert loads_mcp(modules)
    assert [call.name for call in docs.calls] == ["search_docs"]
    assert SEARCH_DOCS_TEXT in openai_server.tool_messages()[0]["content"]
    assert "DELETE" in docs.methods()  # the session was ended on SIGTERM
