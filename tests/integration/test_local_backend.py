"""LocalBackend with real runtime processes answering through the fakes."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec, ObservedState
from manager_bot.backends.local import LocalBackend
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until


def spec(bot: FakeBot, telegram: FakeTelegram, llm: FakeOpenAI, **changes: object) -> AgentSpec:
    base = AgentSpec(
        agent_id="localagent",
        secrets=AgentSecrets(
            bot_token=SecretStr(bot.token),
            webhook_secret=SecretStr("unused_in_polling"),
            gateway_key=SecretStr("sk-localagentkey000000000"),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="Be brief.",
        llm_base_url=llm.url,
        telegram_api_url=telegram.url,
    )
    return AgentSpec(**{**base.__dict__, **changes})  # type: ignore[arg-type]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(data_dir=tmp_path, restart_backoff=(0.2, 0.5), crash_loop_threshold=3)
    yield backend
    await backend.shutdown_agents()


async def state_of(backend: LocalBackend, agent_id: str = "localagent") -> ObservedState:
    return (await backend.observe_all())[agent_id].state


async def until_state(backend: LocalBackend, wanted: ObservedState, timeout: float = 30) -> None:
    async def reached() -> bool:
        observed = await backend.observe_all()
        return "localagent" in observed and observed["localagent"].state is wanted

    await wait_until(reached, timeout=timeout)


def pid_of(tmp_path: Path) -> int:
    import json

    pid: int = json.loads((tmp_path / "agents" / "localagent" / "state.json").read_text())["pid"]
    return pid


async def test_agent_answers_and_follows_apply_stop_resume_restart(
    backend: LocalBackend, tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    user = telegram.user(bot)
    await backend.apply(spec(bot, telegram, openai_server))
    await until_state(backend, ObservedState.RUNNING)
    await user.send("hello")
    await user.wait_for(text_contains="echo: hello", timeout=15)
    env_file = tmp_path / "agents" / "localagent" / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    first = pid_of(tmp_path)
    await backend.apply(spec(bot, telegram, openai_server))  # same spec: nothing happens
    assert pid_of(tmp_path) == first
    await backend.apply(spec(bot, telegram, openai_server, system_prompt="Be long.", revision=2))
    await until_state(backend, ObservedState.RUNNING)
    assert pid_of(tmp_path) != first
    await user.send("again")
    await user.wait_for(text_contains="echo: again", timeout=15)
    assert openai_server.chat_requests()[-1]["messages"][0]["content"] == "Be long."

    await backend.stop("localagent")
    assert await state_of(backend) is ObservedState.STOPPED
    await user.send("anyone?")
    await asyncio.sleep(1.0)
    assert not any("anyone?" in m["text"] for m in user.messages())

    await backend.apply(spec(bot, telegram, openai_server, system_prompt="Be long.", revision=2))
    await until_state(backend, ObservedState.RUNNING)
    await user.wait_for(text_contains="echo: anyone?", timeout=15)  # the queued message
    before = pid_of(tmp_path)
    await backend.restart("localagent")
    await until_state(backend, ObservedState.RUNNING)
    assert pid_of(tmp_path) != before

    logs = await backend.logs("localagent", 20)
    assert "ready as @local_bot" in logs
    assert bot.token not in logs


async def test_a_killed_agent_is_restarted(
    backend: LocalBackend, tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    await backend.apply(spec(bot, telegram, openai_server))
    await until_state(backend, ObservedState.RUNNING)
    victim = pid_of(tmp_path)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        observed = (await backend.observe_all())["localagent"]
        return observed.state is ObservedState.RUNNING and pid_of(tmp_path) != victim

    await wait_until(replaced, timeout=30)
    assert (await backend.observe_all())["localagent"].restarts == 1
    user = telegram.user(bot)
    await user.send("still alive?")
    await user.wait_for(text_contains="echo: still alive?", timeout=15)


async def test_a_crashing_agent_ends_crash_looping_with_a_reason(
    backend: LocalBackend, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="broken_bot")
    broken = spec(bot, telegram, openai_server, llm_base_url="not-a-url")  # the runtime exits 2
    await backend.apply(broken)
    await until_state(backend, ObservedState.CRASH_LOOPING)
    observed = (await backend.observe_all())["localagent"]
    assert observed.reason is not None and "exited with code 2" in observed.reason
    assert "invalid configuration" in await backend.logs("localagent")


async def test_a_new_manager_adopts_live_agents_and_restarts_dead_ones(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    first = LocalBackend(data_dir=tmp_path)
    await first.apply(spec(bot, telegram, openai_server))
    await until_state(first, ObservedState.RUNNING)
    pid = pid_of(tmp_path)
    await first.close()  # the manager goes away; the agent stays

    second = LocalBackend(data_dir=tmp_path)
    try:
        await second.adopt()
        await until_state(second, ObservedState.RUNNING)
        assert pid_of(tmp_path) == pid
        os.kill(pid, signal.SIGKILL)
        await second.close()

        third = LocalBackend(data_dir=tmp_path)
        await third.adopt()
        await until_state(third, ObservedState.RUNNING)
        assert pid_of(tmp_path) != pid
        user = telegram.user(bot)
        await user.send("after restart")
        await user.wait_for(text_contains="echo: after restart", timeout=15)
        await third.delete("localagent")
        assert not (tmp_path / "agents" / "localagent").exists()
        assert "localagent" not in await third.observe_all()
        await third.close()
    finally:
        await second.shutdown_agents()
