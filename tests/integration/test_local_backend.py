"""LocalBackend with real runtime processes answering through the fakes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec, ObservedState
from manager_bot.backends.local import LocalBackend
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until

WEBHOOK_SECRET = "unused_in_polling-webhook-secret"
GATEWAY_KEY = "sk-localagentkey000000000"


def spec(bot: FakeBot, telegram: FakeTelegram, llm: FakeOpenAI, **changes: object) -> AgentSpec:
    base = AgentSpec(
        agent_id="localagent",
        secrets=AgentSecrets(
            bot_token=SecretStr(bot.token),
            webhook_secret=SecretStr(WEBHOOK_SECRET),
            gateway_key=SecretStr(GATEWAY_KEY),
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


def state_file(tmp_path: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads(
        (tmp_path / "agents" / "localagent" / "state.json").read_text()
    )
    return state


def pid_of(tmp_path: Path) -> int:
    pid = state_file(tmp_path)["pid"]
    assert isinstance(pid, int)
    return pid


async def started_by_a_manager_gone_since(tmp_path: Path, agent_spec: AgentSpec) -> int:
    """The agent applied and running under one LocalBackend, which then goes away (the
    agent stays, as it does when the manager stops); its pid."""
    first = LocalBackend(data_dir=tmp_path)
    await first.apply(agent_spec)
    await until_state(first, ObservedState.RUNNING)
    pid = pid_of(tmp_path)
    await first.close()
    return pid


def files_holding_secrets(tmp_path: Path, bot: FakeBot) -> list[str]:
    """Every file under data/agents/ whose bytes contain a secret of the agent."""
    secrets = [bot.token.encode(), WEBHOOK_SECRET.encode(), GATEWAY_KEY.encode()]
    return [
        str(path)
        for path in (tmp_path / "agents").rglob("*")
        if path.is_file() and any(secret in path.read_bytes() for secret in secrets)
    ]


def runtimes_in(directory: Path) -> list[int]:
    """Pids of the `python -m runtime` processes working in `directory` (spawned by anyone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"runtime" in command and Path(os.readlink(entry / "cwd")) == directory:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie): read from /proc, not from a
    return code asyncio's child watcher may not have set yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, as /proc/net/tcp* spells them."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def non_loopback_addresses() -> list[str]:
    """This machine's other addresses (`hostname -I`), if it has any."""
    hostname = shutil.which("hostname")
    if hostname is None:
        return []
    result = subprocess.run([hostname, "-I"], capture_output=True, text=True, check=False)
    return [address for address in result.stdout.split() if not address.startswith("127.")]


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


async def test_no_secret_is_written_under_the_agents_directory(
    backend: LocalBackend, tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.expected_key = GATEWAY_KEY  # an answer proves the process has its key
    bot = telegram.add_bot(username="local_bot")
    await backend.apply(spec(bot, telegram, openai_server))
    await until_state(backend, ObservedState.RUNNING)
    user = telegram.user(bot)
    await user.send("hello")
    await user.wait_for(text_contains="echo: hello", timeout=15)

    assert files_holding_secrets(tmp_path, bot) == []
    env = json.loads((tmp_path / "agents" / "localagent" / "env").read_text())
    assert env["AGENT_ID"] == "localagent" and env["HOST"] == "127.0.0.1"
    assert not {"BOT_TOKEN", "WEBHOOK_SECRET", "LLM_API_KEY"} & env.keys()


async def test_a_killed_agent_is_restarted_with_the_secrets_in_memory(
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
    assert files_holding_secrets(tmp_path, bot) == []


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


async def test_a_new_manager_adopts_a_live_agent_and_leaves_a_dead_one_to_apply(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    """Secrets live in the manager's memory: a new manager can watch a live process, but
    only an apply (reconcile, right after adopt) can start a dead one."""
    bot = telegram.add_bot(username="local_bot")
    agent_spec = spec(bot, telegram, openai_server)
    directory = tmp_path / "agents" / "localagent"
    pid = await started_by_a_manager_gone_since(tmp_path, agent_spec)

    second = LocalBackend(data_dir=tmp_path, restart_backoff=(0.1,))
    third = LocalBackend(data_dir=tmp_path, restart_backoff=(0.1,))
    try:
        await second.adopt()
        await until_state(second, ObservedState.RUNNING)
        assert pid_of(tmp_path) == pid
        os.kill(pid, signal.SIGKILL)  # dies under a manager that never had its secrets
        await until_state(second, ObservedState.MISSING)
        await asyncio.sleep(1.0)  # well past the backoff: nothing may have been spawned
        assert runtimes_in(directory) == []
        await second.close()

        await third.adopt()  # the agent is dead when this manager starts
        observed = (await third.observe_all())["localagent"]  # what reconcile sees at once
        assert observed.state is ObservedState.MISSING and observed.reason == "no process"
        await third.restart("localagent")  # no secrets: it must not start half-configured
        await asyncio.sleep(1.0)
        assert runtimes_in(directory) == []
        assert await state_of(third) is ObservedState.MISSING

        await third.apply(agent_spec)  # what reconcile does for a missing agent
        await until_state(third, ObservedState.RUNNING)
        assert pid_of(tmp_path) != pid
        user = telegram.user(bot)
        await user.send("after restart")
        await user.wait_for(text_contains="echo: after restart", timeout=15)
        assert files_holding_secrets(tmp_path, bot) == []

        await third.delete("localagent")
        assert not directory.exists()
        assert "localagent" not in await third.observe_all()
    finally:
        await third.shutdown_agents()
        await second.shutdown_agents()


async def test_a_process_its_manager_died_before_recording_is_stopped_on_adopt(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    """The manager is killed between starting an agent's process and writing its pid:
    the process runs on, named by no state.json. The next manager stops it when it
    adopts, so the apply after (reconcile's) leaves one process serving the bot, not
    two. Another program working in the directory is left alone."""
    bot = telegram.add_bot(username="stray_bot")
    agent_spec = spec(bot, telegram, openai_server)
    directory = tmp_path / "agents" / "localagent"
    stray = await started_by_a_manager_gone_since(tmp_path, agent_spec)
    state = state_file(tmp_path)  # as apply left it, before the spawn recorded its pid
    (directory / "state.json").write_text(json.dumps({**state, "pid": None, "start_time": None}))
    bystander = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", cwd=directory
    )
    second = LocalBackend(data_dir=tmp_path, restart_backoff=(0.1,))
    try:
        await second.adopt()
        assert runtimes_in(directory) == []
        assert running(bystander.pid)
        await second.apply(agent_spec)
        await until_state(second, ObservedState.RUNNING)
        assert runtimes_in(directory) == [pid_of(tmp_path)] != [stray]
        user = telegram.user(bot)
        await user.send("one of me")
        await user.wait_for(text_contains="echo: one of me", timeout=15)
    finally:
        bystander.kill()
        await bystander.wait()
        await second.shutdown_agents()


async def test_restarting_an_adopted_agent_stops_it_until_it_is_applied(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    agent_spec = spec(bot, telegram, openai_server)
    directory = tmp_path / "agents" / "localagent"
    pid = await started_by_a_manager_gone_since(tmp_path, agent_spec)

    second = LocalBackend(data_dir=tmp_path)
    try:
        await second.adopt()
        await until_state(second, ObservedState.RUNNING)
        await second.restart("localagent")
        assert await state_of(second) is ObservedState.MISSING  # reconcile applies it
        await asyncio.sleep(1.0)
        assert runtimes_in(directory) == []

        await second.apply(agent_spec)
        await until_state(second, ObservedState.RUNNING)
        assert pid_of(tmp_path) != pid
        await second.restart("localagent")  # applied now: a restart is a restart
        await until_state(second, ObservedState.RUNNING)
        user = telegram.user(bot)
        await user.send("restarted")
        await user.wait_for(text_contains="echo: restarted", timeout=15)
    finally:
        await second.shutdown_agents()


async def test_an_env_file_from_an_older_install_loses_its_secrets_on_adopt(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    directory = tmp_path / "agents" / "localagent"
    directory.mkdir(parents=True)
    old_env = {
        "BOT_TOKEN": bot.token,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LLM_API_KEY": GATEWAY_KEY,
        "AGENT_ID": "localagent",
        "MODE": "polling",
        "PORT": "0",
        "LLM_MODEL": "gpt-4o-mini",
    }
    for name in ("env", "env.tmp"):  # env.tmp: a write cut short
        (directory / name).write_text(json.dumps(old_env))
        (directory / name).chmod(0o600)
    (directory / "system-prompt").write_text("Be brief.")
    (directory / "state.json").write_text(
        json.dumps({"agent_id": "localagent", "running": True, "pid": None, "env_hash": "old"})
    )
    assert files_holding_secrets(tmp_path, bot) != []

    backend = LocalBackend(data_dir=tmp_path)
    try:
        await backend.adopt()
        assert files_holding_secrets(tmp_path, bot) == []
        assert not (directory / "env.tmp").exists()
        env = json.loads((directory / "env").read_text())
        assert env == {k: old_env[k] for k in ("AGENT_ID", "MODE", "PORT", "LLM_MODEL")}
        assert stat.S_IMODE((directory / "env").stat().st_mode) == 0o600
        assert await state_of(backend) is ObservedState.MISSING

        await backend.apply(spec(bot, telegram, openai_server))
        await until_state(backend, ObservedState.RUNNING)
        user = telegram.user(bot)
        await user.send("migrated")
        await user.wait_for(text_contains="echo: migrated", timeout=15)
        assert files_holding_secrets(tmp_path, bot) == []
    finally:
        await backend.shutdown_agents()


async def test_an_agent_listens_on_loopback_only(
    backend: LocalBackend, tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    await backend.apply(spec(bot, telegram, openai_server))
    await until_state(backend, ObservedState.RUNNING)
    port = state_file(tmp_path)["port"]
    assert isinstance(port, int)

    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
    for address in await asyncio.to_thread(non_loopback_addresses):
        with pytest.raises(OSError):
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
            writer.close()


async def test_the_log_rotates_while_the_agent_runs(
    tmp_path: Path, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    backend = LocalBackend(data_dir=tmp_path, log_max_bytes=1024, log_backups=2)
    log_file = tmp_path / "agents" / "localagent" / "runtime.log"
    try:
        bot = telegram.add_bot(username="local_bot")
        await backend.apply(spec(bot, telegram, openai_server))
        await until_state(backend, ObservedState.RUNNING)
        pid = pid_of(tmp_path)
        user = telegram.user(bot)
        openai_server.fail_next(401, times=1000)  # each message logs "LLM call failed"
        sent = 0
        while not log_file.with_name("runtime.log.1").exists():
            assert sent < 50, "runtime.log never rotated"
            sent += 1
            await user.send(f"message {sent}")
            await user.wait_for(text_contains="API key was rejected", timeout=15)

        assert pid_of(tmp_path) == pid  # rotated by the process, not by a respawn
        assert await state_of(backend) is ObservedState.RUNNING
        assert log_file.stat().st_size < 1024
        assert not log_file.with_name("runtime.log.3").exists()  # two backups at most
        logs = await backend.logs("localagent", 5)
        assert len(logs.splitlines()) == 5
        assert "LLM call failed (auth)" in logs.splitlines()[-1]
        assert bot.token not in logs
        assert files_holding_secrets(tmp_path, bot) == []
    finally:
        await backend.shutdown_agents()
