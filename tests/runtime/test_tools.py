"""An agent with tools over MCP: what the user sees and what the model was told.

The runtime reaches its servers at MCP_BASE_URL/{name}; in production that is the
gateway's proxy, here the fake MCP server's named endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from runtime.config import RuntimeSettings
from runtime.settings_loading import ConfigError, load_settings
from runtime.tools import cap
from tests.fakes.mcp_server import FAIL_TEXT, SEARCH_DOCS_TEXT, FakeMcpServer, ToolCall
from tests.fakes.openai_api import FakeOpenAI, JsonDict, ToolCalls
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until
from tests.runtime.conftest import LLM_KEY, agent_env, http_get

STATUS_PREFIX = "🔧"


@pytest.fixture
async def mcp() -> AsyncIterator[FakeMcpServer]:
    async with FakeMcpServer() as server:
        yield server


def tool_result_reply(messages: list[JsonDict]) -> str:
    """The model's final words: it quotes the last tool result it got."""
    results = [m["content"] for m in messages if m.get("role") == "tool"]
    return f"Tool said: {results[-1][:200]}" if results else "No tool was used."


def offered_tools(body: JsonDict) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


def status_notes(bot: FakeBot) -> list[JsonDict]:
    """Every tool status the bot sent, deleted ones included."""
    return [m for m in bot.sent if str(m.get("text", "")).startswith(STATUS_PREFIX)]


async def test_the_agent_answers_with_what_a_tool_returned(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    docs = mcp.named("docs")
    openai_server.script_tool_turns(ToolCalls.of("search_docs", {"query": "deploy"}))
    openai_server.reply_with(tool_result_reply)
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("How do I deploy an agent?")
        answer = await user.wait_for(text_contains="Tool said:")

    assert SEARCH_DOCS_TEXT in answer["text"]
    assert docs.calls == [ToolCall("search_docs", {"query": "deploy"})]
    [tool_message] = openai_server.tool_messages()
    assert SEARCH_DOCS_TEXT in tool_message["content"]
    first = openai_server.chat_requests()[0]
    assert offered_tools(first) == ["search_docs", "fail", "slow", "huge"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["query"]
    # The status was shown while the tool ran, and does not stay behind.
    [note] = status_notes(agent.bot)
    assert note["text"] == "🔧 search_docs…" and note.get("_deleted")
    assert [m["text"] for m in user.messages()] == [answer["text"]]
    # Every request carried the agent's gateway credential, nothing else.
    assert {headers.get("Authorization") for _, headers in docs.requests} == {f"Bearer {LLM_KEY}"}
    # No standing GET stream: through the gateway it would hold a request slot.
    assert "GET" not in docs.methods()


async def test_a_failing_tool_is_reported_to_the_model_and_the_user_gets_an_answer(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    mcp.named("docs")
    openai_server.script_tool_turns(ToolCalls.of("fail"))
    openai_server.reply_with(tool_result_reply)
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("Search for something")
        answer = await user.wait_for(text_contains="Tool said:")

    [tool_message] = openai_server.tool_messages()
    assert tool_message["content"] == f"Error: {FAIL_TEXT}"
    assert FAIL_TEXT in answer["text"]


async def test_a_tool_that_takes_too_long_times_out_and_the_user_still_gets_an_answer(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    docs = mcp.named("docs")
    openai_server.script_tool_turns(ToolCalls.of("slow", {"seconds": 30}))
    openai_server.reply_with(tool_result_reply)
    async with start_agent(
        MCP_SERVERS="docs", MCP_BASE_URL=mcp.url, MCP_CALL_TIMEOUT="0.5"
    ) as agent:
        user = telegram.user(agent.bot)
        await user.send("Take your time")
        answer = await user.wait_for(text_contains="Tool said:", timeout=15)

    [tool_message] = openai_server.tool_messages()
    assert tool_message["content"] == "Error: the tool did not answer within 0.5 seconds."
    assert "did not answer" in answer["text"]
    assert docs.calls == [ToolCall("slow", {"seconds": 30})]
    assert len(docs.cancelled) == 1  # the server was told the call was given up
    assert [m["text"] for m in user.messages()] == [answer["text"]]


async def test_a_huge_tool_result_is_cut_before_the_model_sees_it(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    mcp.named("docs")
    openai_server.script_tool_turns(ToolCalls.of("huge"))
    openai_server.reply_with("That was a lot.")
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("Give me everything")
        await user.wait_for(text_contains="That was a lot.")

    [tool_message] = openai_server.tool_messages()
    content: str = tool_message["content"]
    assert len(content.encode()) <= 16 * 1024
    assert content.startswith("xxxx")
    assert content.endswith("of 1000000 bytes shown]")


async def test_the_step_bound_ends_the_loop_with_an_answer(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    docs = mcp.named("docs")
    # A model that would call tools forever.
    openai_server.script_tool_turns(
        *(ToolCalls.of("search_docs", {"query": f"try {n}"}) for n in range(10))
    )
    openai_server.reply_with("Here is what I found.")
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url, MCP_MAX_STEPS="2") as agent:
        user = telegram.user(agent.bot)
        await user.send("Keep searching")
        await user.wait_for(text_contains="Here is what I found.")

    assert [call.arguments["query"] for call in docs.calls] == ["try 0", "try 1"]
    requests = openai_server.chat_requests()
    assert len(requests) == 3
    assert requests[-1]["tool_choice"] == "none"  # the last round must answer in words
    assert len(openai_server.tool_messages()) == 2
    assert [m["text"] for m in user.messages()] == ["Here is what I found."]


async def test_a_server_down_at_start_is_skipped_then_used_once_it_answers(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    mcp.named("docs")
    tickets = mcp.named("tickets")
    tickets.available = False
    async with start_agent(MCP_SERVERS="docs,tickets", MCP_BASE_URL=mcp.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("first")
        await user.wait_for(text_contains="echo: first")
        assert offered_tools(openai_server.chat_requests()[-1]) == [
            "search_docs",
            "fail",
            "slow",
            "huge",
        ]

        tickets.available = True

        async def both_up() -> bool:
            _, metrics = await http_get(f"{agent.url}/metrics")
            return "hatchbot_agent_mcp_servers_up 2.0" in metrics

        await wait_until(both_up)
        await user.send("second")
        await user.wait_for(text_contains="echo: second")

    # Both servers have a `search_docs`: the model tells them apart by prefix.
    offered = offered_tools(openai_server.chat_requests()[-1])
    assert "docs__search_docs" in offered and "tickets__search_docs" in offered
    assert "search_docs" not in offered


async def test_a_status_that_cannot_be_sent_does_not_stop_the_answer(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    mcp.named("docs")
    openai_server.script_tool_turns(ToolCalls.of("search_docs", {"query": "x"}))
    openai_server.reply_with(tool_result_reply)
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
        telegram.inject_fault("sendMessage", status=400, bot=agent.bot, times=1)
        user = telegram.user(agent.bot)
        await user.send("search")
        answer = await user.wait_for(text_contains="Tool said:")
    assert [m["text"] for m in user.messages()] == [answer["text"]]


async def test_without_servers_the_model_is_offered_no_tools(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with start_agent() as agent:
        assert agent.runtime.tools is None
        user = telegram.user(agent.bot)
        await user.send("plain")
        await user.wait_for(text_contains="echo: plain")
    assert "tools" not in openai_server.chat_requests()[-1]


def test_server_names_are_checked(telegram: FakeTelegram, openai_server: FakeOpenAI) -> None:
    bot = telegram.add_bot(username="agent_bot")
    with pytest.raises(ConfigError, match="MCP_SERVERS"):
        load_settings(RuntimeSettings, agent_env(telegram, openai_server, bot, MCP_SERVERS="Docs"))
    settings = load_settings(
        RuntimeSettings, agent_env(telegram, openai_server, bot, MCP_SERVERS="docs, web,docs")
    )
    assert settings.mcp_servers == ["docs", "web"]
    assert settings.mcp_base_url == f"{openai_server.url}/mcp"  # the gateway's proxy


def test_cut_results_stay_within_the_limit() -> None:
    assert cap("short", 1024) == "short"
    cut = cap("é" * 5000, 1024)
    assert len(cut.encode()) <= 1024 and cut.endswith("of 10000 bytes shown]")


async def test_a_server_that_answers_in_sse_works_the_same(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    openai_server.script_tool_turns(ToolCalls.of("search_docs", {"query": "sse"}))
    openai_server.reply_with(tool_result_reply)
    async with FakeMcpServer(sse=True) as mcp:
        docs = mcp.named("docs")
        async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
            user = telegram.user(agent.bot)
            await user.send("over SSE")
            answer = await user.wait_for(text_contains="Tool said:")
    assert SEARCH_DOCS_TEXT in answer["text"]
    assert docs.calls == [ToolCall("search_docs", {"query": "sse"})]


async def test_the_fake_model_calls_tools_in_both_of_the_real_apis_forms(
    openai_server: FakeOpenAI,
) -> None:
    """What the runtime's tests rely on, checked through the official SDK."""
    import openai

    tools = [{"type": "function", "function": {"name": "search_docs", "parameters": {}}}]
    messages = [{"role": "user", "content": "look it up"}]
    openai_server.script_tool_turns(
        ToolCalls.of("search_docs", {"query": "plain"}),
        ToolCalls.of("search_docs", {"query": "streamed"}, text="Let me look."),
    )
    async with openai.AsyncOpenAI(base_url=openai_server.url, api_key="sk-test") as client:
        plain = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=tools
        )
        choice = plain.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.function.name == "search_docs"
        assert call.function.arguments == '{"query": "plain"}'

        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=tools, stream=True
        )
        text, arguments, finish = "", "", None
        async for chunk in stream:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for piece in delta.tool_calls or []:
                if piece.function is not None:
                    arguments += piece.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert (text, arguments, finish) == ("Let me look.", '{"query": "streamed"}', "tool_calls")

        # Without tools offered, the same fake just talks.
        words = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert words.choices[0].message.content == "echo: look it up"


async def test_a_session_the_server_forgot_is_reopened_and_the_call_made_again(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent, mcp: FakeMcpServer
) -> None:
    docs = mcp.named("docs")
    openai_server.script_tool_turns(
        ToolCalls.of("search_docs", {"query": "one"}),
        "Answered one.",
        ToolCalls.of("search_docs", {"query": "two"}),
    )
    openai_server.reply_with(tool_result_reply)
    async with start_agent(MCP_SERVERS="docs", MCP_BASE_URL=mcp.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("first")
        await user.wait_for(text_contains="Answered one.")
        docs.sessions.clear()  # the server (or the gateway) restarted
        await user.send("second")
        await user.wait_for(text_contains="(query: two)")

    assert [m["content"].endswith("(query: two)") for m in openai_server.tool_messages()] == [
        False,
        True,
    ]
    assert docs.methods().count("initialize") == 2
