"""LocalBackend: each agent is a `python -m runtime` process on this machine (polling mode).

The embedded default: no cluster, no public URL. A supervisor task per agent
restarts a process that dies, with backoff, and gives up (crash-looping) after
too many quick deaths. Agents outlive the manager: their files live under
`data/agents/<id>/` (env with the non-secret settings, system-prompt, state.json,
runtime.log), and a new manager re-adopts the live processes.

Secrets (bot token, webhook secret, gateway credential) never touch the disk: a
process gets them in its environment when it is spawned, and the backend keeps
them in memory from the last `apply`. A manager that has just started has none,
so it cannot respawn a dead agent on its own: such an agent is observed MISSING,
and reconcile (run at every start, right after `adopt`) or the health sweep
applies it with the secrets from the vault.
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
from manager_bot.backends.base import AgentSpec, Observed, ObservedState, memory_url
from manager_bot.backends.manifests import SECRET_ENV
from runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LOG_LIMIT_BYTES = 1024 * 1024  # runtime.log is rotated at this size, by the process itself
LOG_BACKUPS = 3
STOP_GRACE_SECONDS = 15.0  # the runtime drains replies for 10 s, then flushes memory for 3
CRASH_WINDOW_SECONDS = 60.0
POLL_SECONDS = 0.25
RUNTIME_ROOT = Path(runtime.__file__).resolve().parents[1]


PROMPT_FILE = "system-prompt"
ENV_FILE = "env"


def runtime_settings(
    spec: AgentSpec, *, prompt_file: Path, log_file: Path, log_max_bytes: int, log_backups: int
) -> dict[str, str]:
    """The runtime contract for a local agent, secrets aside: polling mode, HTTP on
    127.0.0.1 only, the prompt in a file beside it, a log the process rotates itself."""
    settings = {
        "AGENT_ID": spec.agent_id,
        "MODE": "polling",
        "HOST": "127.0.0.1",
        "LLM_MODEL": spec.llm_model,
        "SYSTEM_PROMPT_FILE": str(prompt_file),
        "TELEGRAM_API_URL": spec.telegram_api_url,
        "HISTORY_LIMIT": str(spec.history_limit),
        "LLM_VISION": "true" if spec.llm_vision else "false",
        "LOG_FILE": str(log_file),
        "LOG_MAX_BYTES": str(log_max_bytes),
        "LOG_BACKUPS": str(log_backups),
    }
    if spec.llm_base_url:
        settings["LLM_BASE_URL"] = spec.llm_base_url
    if kept_at := memory_url(spec):
        settings["MEMORY_URL"] = kept_at
        settings["MEMORY_IDLE_DAYS"] = str(spec.memory_idle_days)
    if spec.allowed_user_ids:
        settings["ALLOWED_USER_IDS"] = ",".join(map(str, spec.allowed_user_ids))
    if spec.mcp_servers:
        settings["MCP_SERVERS"] = ",".join(spec.mcp_servers)
    return settings


def runtime_secrets(spec: AgentSpec) -> dict[str, str]:
    """What a process gets in its environment only, never in a file.

    The LLM key is the agent's gateway credential: no provider key reaches a process."""
    secrets = {
        "BOT_TOKEN": spec.secrets.bot_token.get_secret_value(),
        "WEBHOOK_SECRET": spec.secrets.webhook_secret.get_secret_value(),
    }
    if spec.secrets.gateway_key is not None:
        secrets["LLM_API_KEY"] = spec.secrets.gateway_key.get_secret_value()
    return secrets


def _env_hash(env: dict[str, str]) -> str:
    """A digest of all the process sees (secrets included, never written whole)."""
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


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


def _strays(directories: set[Path], known: set[int]) -> dict[int, Path]:
    """Runtime processes (`python -m runtime`) working in an agent's directory whose pid
    no state.json names, and the directory of each. A manager killed between starting a
    process and recording its pid leaves one running (agents outlive their manager), and
    the next manager would start a second beside it: two processes serving one bot.
    Read from Linux's /proc; elsewhere none is found."""
    found: dict[int, Path] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if cwd in directories and argv[1:3] == [b"-m", b"runtime"]:
            found[int(entry)] = cwd
    return found


async def _end_process(
    pid: int, start_time: str | None, process: asyncio.subprocess.Process | None = None
) -> None:
    """SIGTERM (the runtime drains its replies), then SIGKILL after the grace period.
    `process`: our child's handle, if we started it (then reaped here)."""
    if not _alive(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.returncode is not None:
            return
        if process is None and not _alive(pid, start_time):
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        await process.wait()


@dataclass
class _Agent:
    """What the backend knows of one agent, mirrored to state.json (all but its secrets)."""

    agent_id: str
    directory: Path
    running: bool = True
    pid: int | None = None
    start_time: str | None = None
    port: int | None = None
    env_hash: str | None = None
    installation: str | None = None  # the manager installation that made it
    ready: bool = False
    since: datetime | None = None
    crash_reason: str | None = None
    restarts: int = 0
    deaths: list[float] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    supervisor: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # From the last `apply`, in memory only: None after a manager restart until the
    # next apply, and then no process may be spawned.
    settings: dict[str, str] | None = None
    secrets: dict[str, str] | None = field(default=None, repr=False)

    @property
    def env_file(self) -> Path:
        return self.directory / ENV_FILE

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
        log_max_bytes: int = LOG_LIMIT_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        # Absolute: a process runs in its own directory and is given paths to its files.
        self._root = (data_dir / "agents").absolute()
        self._python = python
        self._backoff = restart_backoff
        self._threshold = crash_loop_threshold
        self._log_max_bytes = log_max_bytes
        self._log_backups = log_backups
        self._agents: dict[str, _Agent] = {}
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def adopt(self) -> None:
        """After a manager (re)start: take over the live agents.

        A dead agent is not started here: its secrets are in no file, so it is observed
        MISSING until it is applied (reconcile, which the manager runs next, does)."""
        directories = await asyncio.to_thread(self._agent_directories)
        for directory in directories:
            await asyncio.to_thread(_scrub_env_file, directory)
            agent = await asyncio.to_thread(self._load, directory)
            if agent is None or agent.agent_id in self._agents:
                continue
            self._agents[agent.agent_id] = agent
            if agent.running and agent.is_alive():
                log.info("adopted agent %s (pid %s)", agent.agent_id, agent.pid)
                self._supervise(agent)  # readiness; a death is then reported missing
            elif agent.running:
                log.info("agent %s has no process: it starts when it is applied", agent.agent_id)
        known = {agent.pid for agent in self._agents.values() if agent.pid is not None}
        resolved = {directory.resolve() for directory in directories}
        for pid, directory in (await asyncio.to_thread(_strays, resolved, known)).items():
            log.warning(
                "stopping a stray process of agent %s (pid %s): its manager died before "
                "recording it", directory.name, pid,
            )  # fmt: skip
            await _end_process(pid, _process_start_time(pid))

    async def close(self) -> None:
        """Stop supervising; the agents themselves keep running (they are users' bots)."""
        for agent in self._agents.values():
            if agent.supervisor is not None:
                await cancel_and_wait(agent.supervisor)
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

    def fingerprint(self, spec: AgentSpec) -> str | None:
        """The hash of all a process of `spec` sees (what `Observed.fingerprint` reads)."""
        return self._seen_by_process(spec, self._root / spec.agent_id)[2]

    def _seen_by_process(
        self, spec: AgentSpec, directory: Path
    ) -> tuple[dict[str, str], dict[str, str], str]:
        """(settings, secrets, their hash): the prompt and the secrets are part of what the
        process sees, so a change of either restarts it."""
        settings = runtime_settings(
            spec,
            prompt_file=directory / PROMPT_FILE,
            log_file=directory / "runtime.log",
            log_max_bytes=self._log_max_bytes,
            log_backups=self._log_backups,
        )
        secrets = runtime_secrets(spec)
        return (
            settings,
            secrets,
            _env_hash({**settings, **secrets, PROMPT_FILE: spec.system_prompt}),
        )

    async def apply(self, spec: AgentSpec) -> None:
        agent = self._agents.get(spec.agent_id)
        if agent is None:
            agent = _Agent(agent_id=spec.agent_id, directory=self._root / spec.agent_id)
            self._agents[spec.agent_id] = agent
        settings, secrets, new_hash = self._seen_by_process(spec, agent.directory)
        agent.settings, agent.secrets = settings, secrets
        agent.installation = spec.installation or agent.installation
        await asyncio.to_thread(self._write_env, agent, settings)
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
        """A new process. Without secrets in memory (not applied since the manager
        started) only the old one stops: the agent is then observed MISSING, and
        reconcile or the health sweep applies it, which starts it."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        await self._terminate(agent)
        agent.running, agent.crash_reason = True, None
        agent.deaths.clear()
        await asyncio.to_thread(self._save, agent)
        if agent.secrets is None:
            log.warning(
                "agent %s stopped but not started again: not applied since the manager "
                "started, so its secrets are not in memory; it starts when it is applied",
                agent_id,
            )
            return
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
        return await asyncio.to_thread(_tail, agent.log_file, lines, backups=self._log_backups)

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
                fingerprint=agent.env_hash,
                installation=agent.installation,
            )

        if not agent.running:
            return seen(ObservedState.STOPPED)
        if agent.crash_reason is not None:
            return seen(ObservedState.CRASH_LOOPING, agent.crash_reason)
        if agent.is_alive():
            return seen(ObservedState.RUNNING if agent.ready else ObservedState.STARTING)
        # No secrets: nothing can start it but an apply, which MISSING asks for.
        if agent.secrets is None or agent.supervisor is None or agent.supervisor.done():
            return seen(ObservedState.MISSING, "no process")
        return seen(ObservedState.STARTING)

    def _supervise(self, agent: _Agent) -> None:
        agent.wake.set()
        if agent.supervisor is None or agent.supervisor.done():
            agent.supervisor = asyncio.create_task(self._supervisor(agent))

    async def _supervisor(self, agent: _Agent) -> None:
        """Keep one process alive while the agent should run; back off, then give up."""
        while agent.running and agent.crash_reason is None:
            if not agent.is_alive() and agent.secrets is None:
                # Adopted, then died: observed MISSING, so it is applied from the vault.
                if agent.pid is not None:
                    log.warning("agent %s exited; it starts when it is applied", agent.agent_id)
                agent.pid, agent.ready, agent.process = None, False, None
                await asyncio.to_thread(self._save, agent)
                break
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
                async with asyncio.timeout(POLL_SECONDS):
                    await agent.wake.wait()

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
        if agent.settings is None or agent.secrets is None:
            return  # the supervisor never asks: only an apply brings them
        agent.port = _free_port()
        await asyncio.to_thread(self._rotate_log, agent)
        # stdout and stderr go to runtime.log until the process's own logging (which
        # rotates the file) takes them over: a configuration error is read there too.
        with agent.log_file.open("ab") as log_handle:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "runtime",
                env={
                    **agent.settings,
                    **agent.secrets,  # in the process's environment only, never in a file
                    "PORT": str(agent.port),
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
        pid, process = agent.pid, agent.process
        agent.pid, agent.ready, agent.process = None, False, None
        if pid is not None:
            await _end_process(pid, agent.start_time, process)

    # -- files (blocking: always through asyncio.to_thread) --------------------------

    def _agent_directories(self) -> list[Path]:
        if not self._root.exists():
            return []
        return sorted(path for path in self._root.iterdir() if path.is_dir())

    def _write_env(self, agent: _Agent, settings: dict[str, str]) -> None:
        """The non-secret settings, for whoever looks at the directory; nothing reads it."""
        agent.directory.mkdir(parents=True, exist_ok=True)
        _write_private_json(agent.env_file, settings)

    def _write_prompt(self, agent: _Agent, prompt: str) -> None:
        """Written whole, then renamed: a starting runtime never reads half a prompt."""
        temporary = agent.prompt_file.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(prompt)
        os.replace(temporary, agent.prompt_file)

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
            "installation": agent.installation,
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
            installation=state.get("installation"),
        )
        if not agent.is_alive():
            agent.pid = None  # dead while the manager was away: restart, not a crash
        return agent

    def _rotate_log(self, agent: _Agent) -> None:
        """Between processes (what one printed before its logging was up, a crash loop's
        errors); while a process runs, it rotates the file itself."""
        path = agent.log_file
        if not path.exists() or path.stat().st_size < self._log_max_bytes:
            return
        for index in range(self._log_backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        path.replace(path.with_name(f"{path.name}.1"))


def _tail(path: Path, lines: int, *, backups: int) -> str:
    """The last `lines` lines of the log, from its rotated copies too when the current
    file (just rotated) holds fewer."""
    found: list[str] = []
    for index in range(backups + 1):
        if len(found) >= lines:
            break
        part = path if index == 0 else path.with_name(f"{path.name}.{index}")
        found = _last_lines(part, lines - len(found)) + found
    return "\n".join(found[-lines:]) if lines > 0 else ""


def _last_lines(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]


def _write_private_json(path: Path, data: dict[str, str]) -> None:
    """Written whole (0600), then renamed: never half a file."""
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def _scrub_env_file(directory: Path) -> None:
    """Installs from before secrets left the disk kept them in `env`: rewrite it without
    them (nothing reads them back; an apply brings them from the vault)."""
    (directory / f"{ENV_FILE}.tmp").unlink(missing_ok=True)  # a write cut short
    path = directory / ENV_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    try:
        env = json.loads(text)
    except ValueError:
        env = None
    if not isinstance(env, dict):
        path.unlink()  # not ours to read, and it may hold anything
        return
    if not env.keys() & set(SECRET_ENV):
        return
    _write_private_json(path, {k: v for k, v in env.items() if k not in SECRET_ENV})
    log.info("agent %s: secrets removed from its env file", directory.name)
