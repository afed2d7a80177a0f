"""The runtime's memory when the gateway keeps it: read once per chat, written after the
reply (never before it), in order, and flushed on the way out. The gateway's side is
stood in for by tests/fakes/memory_api.py, which a test can slow down or take down."""

from __future__ import annotations

import asyncio

import aiohttp

from runtime.memory import GatewayMemory, Memory
from tests.fakes.memory_api import FakeMemory
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import until
from tests.runtime.conftest import LLM_KEY, WEBHOOK_SECRET


def seen_by_model(openai_server: FakeOpenAI) -> list[str]:
    return [str(m["content"]) for m in openai_server.chat_requests()[-1]["messages"][1:]]


async def forget(url: str, secret: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/memory/forget", headers={"Authorization": f"Bearer {secret}"}) as answer,
    ):
        return answer.status


async def test_a_stored_chat_is_read_once_and_the_reply_does_not_wait_for_the_write(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with FakeMemory(LLM_KEY) as memory, start_agent(MEMORY_URL=memory.url) as agent:
        user = telegram.user(agent.bot)
        memory.chats[user.id] = [
            {"role": "user", "content": "I am Ada"},
            {"role": "assistant", "content": "Hello Ada"},
        ]
        memory.writes_open.clear()  # the database is slow: writes hang
        await user.send("who am I?")
        await user.wait_for(text_contains="echo: who am I?")
        assert seen_by_model(openai_server) == ["I am Ada", "Hello Ada", "who am I?"]
        assert memory.writes == []  # answered while its write still waits
        for text in ("and now?", "and then?"):
            await user.send(text)
            await user.wait_for(text_contains=f"echo: {text}")
        memory.writes_open.set()
        stored = await until(lambda: len(memory.chats[user.id]) == 8 and memory.chats[user.id])
        assert [turn["content"] for turn in stored][-2:] == ["and then?", "echo: and then?"]
        # The first write was under way; the two replies after it went out as one.
        assert memory.writes == [("PUT", user.id), ("PUT", user.id)]


async def test_memory_down_still_answers_and_keeps_the_past_once_it_is_back(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with FakeMemory(LLM_KEY) as memory, start_agent(MEMORY_URL=memory.url) as agent:
        user = telegram.user(agent.bot)
        memory.chats[user.id] = [
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
        ]
        memory.down = True
        await user.send("hello?")
        await user.wait_for(text_contains="echo: hello?")
        assert seen_by_model(openai_server) == ["hello?"]
        memory.down = False
        await user.send("again")
        await user.wait_for(text_contains="echo: again")
        # The stored past, then what was said while the memory was down, then now.
        assert seen_by_model(openai_server) == [
            "old question", "old answer", "hello?", "echo: hello?", "again",
        ]  # fmt: skip
        stored = await until(lambda: len(memory.chats[user.id]) == 6 and memory.chats[user.id])
        assert stored[0]["content"] == "old question"  # nothing stored was overwritten


async def test_a_stop_flushes_the_writes_still_waiting(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with FakeMemory(LLM_KEY) as memory:
        async with start_agent(MEMORY_URL=memory.url) as agent:
            user = telegram.user(agent.bot)
            memory.writes_open.clear()
            await user.send("last words")
            await user.wait_for(text_contains="echo: last words")
            stopping = asyncio.create_task(agent.runtime.stop())
            await asyncio.sleep(0.2)
            assert not stopping.done()  # waiting for the write...
            memory.writes_open.set()
            await stopping
        assert [t["content"] for t in memory.chats[user.id]] == ["last words", "echo: last words"]


async def test_forget_takes_the_webhook_secret_and_nothing_forgotten_comes_back(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    async with FakeMemory(LLM_KEY) as memory, start_agent(MEMORY_URL=memory.url) as agent:
        user = telegram.user(agent.bot)
        await user.send("remember this")
        await user.wait_for(text_contains="echo: remember this")
        await until(lambda: memory.chats.get(user.id))
        assert await forget(agent.url, "not-the-secret") == 401
        assert await forget(agent.url, LLM_KEY) == 401  # the gateway key is not it
        assert memory.chats

        memory.writes_open.clear()
        await user.send("one more")  # its write waits...
        await user.wait_for(text_contains="echo: one more")
        forgetting = asyncio.create_task(forget(agent.url, WEBHOOK_SECRET))
        await asyncio.sleep(0.2)
        memory.writes_open.set()  # ...and lands before the forget, never after it
        assert await forgetting == 200
        assert memory.chats == {}
        assert memory.writes[-1] == ("DELETE", None)
        await user.send("what did I say?")
        await user.wait_for(text_contains="echo: what did I say?")
        assert seen_by_model(openai_server) == ["what did I say?"]


async def test_a_gateway_that_does_not_forget_is_reported(
    telegram: FakeTelegram, openai_server: FakeOpenAI, start_agent
) -> None:
    """The manager then restarts the agent instead (services/agent_memory.py)."""
    async with FakeMemory(LLM_KEY) as memory, start_agent(MEMORY_URL=memory.url) as agent:
        memory.down = True
        forgetting = asyncio.create_task(forget(agent.url, WEBHOOK_SECRET))
        assert await forgetting == 503


async def test_a_chat_idle_past_the_limit_is_forgotten_here_and_in_the_store() -> None:
    now = [0.0]
    async with FakeMemory(LLM_KEY) as fake:
        memory = Memory(
            limit_turns=5, store=GatewayMemory(url=fake.url, credential=LLM_KEY),
            idle_seconds=30 * 86400, clock=lambda: now[0],
        )  # fmt: skip
        fake.chats[1] = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "x"}]
        assert len(await memory.messages(1)) == 2
        now[0] += 30 * 86400 - 1
        assert len(await memory.messages(1)) == 2  # used again just in time
        now[0] += 30 * 86400 + 1
        assert await memory.messages(1) == []
        await memory.close(timeout=5)
        assert fake.chats == {} and fake.writes == [("DELETE", 1)]
