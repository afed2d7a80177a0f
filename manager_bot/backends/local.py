"""LocalBackend: each agent is a `python -m runtime` process on this machine (polling mode).

The embedded default: no cluster, no public URL. A supervisor task per agent
restarts a process that dies, with backoff, and gives up (crash-looping) after
too many quick deaths. Agents outlive the manager: their state lives under
`data/agents/<id>/` (env file 0600, state.json, runtime.log), and a new
manager re-adopts live processes and restarts dead ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

import runtime
from manager_bot.backends.base import AgentSpec, Observed, ObservedState

log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 1024 * 1024
LOG_BACKUPS = 3
STOP_GRACE_SECONDS = 12.0  # the runtime drains replies for up to 10 s
CRASH_WINDOW_SECONDS = 60.0
POLL_SECONDS = 0.25
RUNTIME_ROOT = Path(runtime.__file__).resolve().parents[1]


PROMPT_FILE = "system-prompt"


def runtime_env(spec: AgentSpec, *, port: int, prompt_file: Path) -> dict[str, str]:
    """The runtime contract for a local agent: polling mode, the prompt in a file beside it.

    The LLM key is the agent's gateway credential: no provider key reaches a process."""
    env = {
        "BOT_TOKEN": spec.secrets.bot_token.get_secret_value(),
        "WEBHOOK_SECRET": spec.secrets.webhook_secret.get_secret_value(),
        "AGENT_ID": spec.agent_id,
        "MODE": "polling",
        "PORT": str(port),
        "LLM_MODEL": spec.llm_model,
        "SYSTEM_PROMPT_FILE": str(prompt_file),
        "TELEGRAM_API_URL": spec.telegram_api_url,
        "HISTORY_LIMIT": str(spec.history_limit),
    }
    if spec.secrets.gateway_key is not None:
        env["LLM_API_KEY"] = spec.secrets.gateway_key.get_secret_value()
    if spec.llm_base_url:
        env["LLM_BASE_URL"] = spec.llm_base_url
    if spec.allowed_user_ids:
        env["ALLOWED_USER_IDS"] = ",".join(map(str, spec.allowed_user_ids))
    return env


def _env_hash(env: dict[str, str]) -> str:
    stable = {k: v for k, v in env.items() if k != "PORT"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: tells a live agent from a recycled pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int | None, start_time: str | None) -> bool:
    if not pid:
        return False
    current = _process_start_time(pid)
    if current is None or (start_time is not None and current != start_time):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class _Agent:
    """What the backend knows of one agent, mirrored to state.json."""

    agent_id: str
    directory: Path
    running: bool = True
    pid: int | None = None
    start_time: str | None = None
    port: int | None = None
    env_hash: str | None = None
    ready: bool = False
    since: datetime | None = None
    crash_reason: str | None = None
    restarts: int = 0
    deaths: list[float] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    supervisor: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def env_file(self) -> Path:
        return self.directory / "env"

    @property
    def prompt_file(self) -> Path:
        return self.directory / PROMPT_FILE

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "runtime.log"

    def is_alive(self) -> bool:
        if self.process is not None and self.process.returncode is not None:
            return False
        return _alive(self.pid, self.start_time)


class LocalBackend:
    """Implements `Backend` with supervised local processes."""

    def __init__(
        self,
        *,
        data_dir: Path,
        python: str = sys.executable,
        restart_backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0),
        crash_loop_threshold: int = 5,
    ) -> None:
        self._root = data_dir / "agents"
        self._python = python
        self._backoff = restart_backoff
        self._threshold = crash_loop_threshold
        self._agents: dict[str, _Agent] = {}
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def adopt(self) -> None:
        """After a manager (re)start: take over live agents, restart the dead ones."""
        directories = await asyncio.to_thread(self._agent_directories)
        for directory in directories:
            agent = await asyncio.to_thread(self._load, directory)
            if agent is None or agent.agent_id in self._agents:
                continue
            self._agents[agent.agent_id] = agent
            if agent.running:
                if agent.is_alive():
                    log.info("adopted agent %s (pid %s)", agent.agent_id, agent.pid)
                self._supervise(agent)

    async def close(self) -> None:
        """Stop supervising; the agents themselves keep running (they are users' bots)."""
        for agent in self._agents.values():
            if agent.supervisor is not None:
                agent.supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent.supervisor
        if self._http is not None:
            await self._http.close()

    async def shutdown_agents(self) -> None:
        """Stop every agent process (tests, or a machine being retired)."""
        for agent in self._agents.values():
            agent.running = False
        await self.close()  # supervisors first: none may respawn what is being stopped
        for agent in list(self._agents.values()):
            await self._terminate(agent)

    # -- Backend ---------------------------------------------------------------------

    async def apply(self, spec: AgentSpec) -> None:
        agent = self._agents.get(spec.agent_id)
        if agent is None:
            agent = _Agent(agent_id=spec.agent_id, directory=self._root / spec.agent_id)
            self._agents[spec.agent_id] = agent
        env = runtime_env(spec, port=agent.port or 0, prompt_file=agent.prompt_file)
        # The prompt is part of what the process sees: an edit restarts it.
        new_hash = _env_hash({**env, PROMPT_FILE: spec.system_prompt})
        await asyncio.to_thread(self._write_env, agent, env)
        await asyncio.to_thread(self._write_prompt, agent, spec.system_prompt)
        if not spec.running:
            await self._stop(agent)
            return
        changed = new_hash != agent.env_hash
        agent.env_hash, agent.running, agent.crash_reason = new_hash, True, None
        agent.deaths.clear()
        if changed and agent.is_alive():
            await self._terminate(agent)
        await asyncio.to_thread(self._save, agent)
        self._supervise(agent)

    async def restart(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        await self._terminate(agent)
        agent.running, agent.crash_reason = True, None
        agent.deaths.clear()
        await asyncio.to_thread(self._save, agent)
        self._supervise(agent)

    async def stop(self, agent_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None:
            await self._stop(agent)

    async def delete(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            directory = self._root / agent_id
            await asyncio.to_thread(shutil.rmtree, directory, True)
            return
        await self._stop(agent)
        if agent.supervisor is not None:
            agent.supervisor.cancel()
        await asyncio.to_thread(shutil.rmtree, agent.directory, True)

    async def logs(self, agent_id: str, lines: int = 100) -> str:
        agent = self._agents.get(agent_id)
        if agent is None:
            return ""
        return await asyncio.to_thread(_tail, agent.log_file, lines)

    async def observe(self, agent_id: str) -> Observed | None:
        agent = self._agents.get(agent_id)
        return self._observe(agent) if agent is not None else None

    async def observe_all(self) -> dict[str, Observed]:
        return {agent_id: self._observe(agent) for agent_id, agent in self._agents.items()}

    # -- supervision -------------------------------------------------------------------

    def _observe(self, agent: _Agent) -> Observed:
        def seen(state: ObservedState, reason: str | None = None) -> Observed:
            probe = f"http://127.0.0.1:{agent.port}" if agent.port else None
            return Observed(
                agent_id=agent.agent_id,
                state=state,
                reason=reason,
                restarts=agent.restarts,
                since=agent.since,
                probe_url=probe,
            )

        if not agent.running:
            return seen(ObservedState.STOPPED)
        if agent.crash_reason is not None:
            return seen(ObservedState.CRASH_LOOPING, agent.crash_reason)
        if agent.is_alive():
            return seen(ObservedState.RUNNING if agent.ready else ObservedState.STARTING)
        if agent.supervisor is None or agent.supervisor.done():
            return seen(ObservedState.MISSING, "no process")
        return seen(ObservedState.STARTING)

    def _supervise(self, agent: _Agent) -> None:
        agent.wake.set()
        if agent.supervisor is None or agent.supervisor.done():
            agent.supervisor = asyncio.create_task(self._supervisor(agent))

    async def _supervisor(self, agent: _Agent) -> None:
        """Keep one process alive while the agent should run; back off, then give up."""
        while agent.running and agent.crash_reason is None:
            if not agent.is_alive():
                if agent.pid is not None:
                    self._record_death(agent)
                    if agent.crash_reason is not None:
                        break
                    delay = self._backoff[min(len(agent.deaths) - 1, len(self._backoff) - 1)]
                    await asyncio.sleep(delay)
                    if not agent.running:
                        break
                await self._spawn(agent)
            elif not agent.ready:
                agent.ready = await self._probe(agent)
            agent.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(agent.wake.wait(), POLL_SECONDS)

    def _record_death(self, agent: _Agent) -> None:
        code = agent.process.returncode if agent.process is not None else None
        now = time.monotonic()
        agent.deaths = [t for t in agent.deaths if now - t < CRASH_WINDOW_SECONDS] + [now]
        agent.pid, agent.ready, agent.process = None, False, None
        agent.restarts += 1
        log.warning("agent %s exited (code %s)", agent.agent_id, code)
        if len(agent.deaths) >= self._threshold:
            exit_text = f"exited with code {code}" if code is not None else "exited"
            agent.crash_reason = f"{exit_text}, restarted {agent.restarts} times"

    async def _spawn(self, agent: _Agent) -> None:
        env = await asyncio.to_thread(self._read_env, agent)
        if env is None:
            agent.crash_reason = "its configuration is missing"
            return
        agent.port = _free_port()
        env["PORT"] = str(agent.port)
        await asyncio.to_thread(self._rotate_log, agent)
        with agent.log_file.open("ab") as log_handle:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "runtime",
                env={
                    **env,
                    "PATH": os.environ.get("PATH", ""),
                    "PYTHONPATH": str(RUNTIME_ROOT),
                    "PYTHONUNBUFFERED": "1",
                },
                cwd=str(agent.directory),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_handle,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # outlives the manager and its signals
            )
        agent.process, agent.pid = process, process.pid
        agent.start_time = _process_start_time(process.pid)
        agent.ready, agent.since = False, datetime.now(UTC)
        await asyncio.to_thread(self._save, agent)

    async def _probe(self, agent: _Agent) -> bool:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            async with self._http.get(f"http://127.0.0.1:{agent.port}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop(self, agent: _Agent) -> None:
        agent.running = False
        agent.wake.set()
        await self._terminate(agent)
        await asyncio.to_thread(self._save, agent)

    async def _terminate(self, agent: _Agent) -> None:
        """SIGTERM (the runtime drains its replies), then SIGKILL after the grace period."""
        pid, process = agent.pid, agent.process
        agent.pid, agent.ready, agent.process = None, False, None
        if pid is None or not _alive(pid, agent.start_time):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                return
            if process is None and not _alive(pid, agent.start_time):
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if process is not None:
            await process.wait()

    # -- files (blocking: always through asyncio.to_thread) --------------------------

    def _agent_directories(self) -> list[Path]:
        if not self._root.exists():
            return []
        return sorted(path for path in self._root.iterdir() if path.is_dir())

    def _write_env(self, agent: _Agent, env: dict[str, str]) -> None:
        agent.directory.mkdir(parents=True, exist_ok=True)
        temporary = agent.env_file.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(env, handle)
        os.replace(temporary, agent.env_file)

    def _write_prompt(self, agent: _Agent, prompt: str) -> None:
        """Written whole, then renamed: a starting runtime never reads half a prompt."""
        temporary = agent.prompt_file.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(prompt)
        os.replace(temporary, agent.prompt_file)

    def _read_env(self, agent: _Agent) -> dict[str, str] | None:
        try:
            env: dict[str, str] = json.loads(agent.env_file.read_text())
        except (OSError, ValueError):
            return None
        return env

    def _save(self, agent: _Agent) -> None:
        agent.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "agent_id": agent.agent_id,
            "running": agent.running,
            "pid": agent.pid,
            "start_time": agent.start_time,
            "port": agent.port,
            "env_hash": agent.env_hash,
            "restarts": agent.restarts,
        }
        # One temporary file per write: saves from two threads must not share one.
        temporary = agent.state_file.with_name(
            f"state.{threading.get_ident()}.{time.monotonic_ns()}.tmp"
        )
        temporary.write_text(json.dumps(state))
        os.replace(temporary, agent.state_file)

    def _load(self, directory: Path) -> _Agent | None:
        try:
            state: dict[str, Any] = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError):
            return None
        agent = _Agent(
            agent_id=str(state.get("agent_id") or directory.name),
            directory=directory,
            running=bool(state.get("running", True)),
            pid=state.get("pid"),
            start_time=state.get("start_time"),
            port=state.get("port"),
            env_hash=state.get("env_hash"),
            restarts=int(state.get("restarts") or 0),
        )
        if not agent.is_alive():
            agent.pid = None  # dead while the manager was away: restart, not a crash
        return agent

    def _rotate_log(self, agent: _Agent) -> None:
        path = agent.log_file
        if not path.exists() or path.stat().st_size < LOG_LIMIT_BYTES:
            return
        for index in range(LOG_BACKUPS - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 256 * 1024))
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
