"""The backend contract: what an agent is to a backend, and what a backend sees.

Backends know nothing of chats or users: they get an `AgentSpec`, make it so
idempotently, and report `Observed` state. Every method may be retried.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pydantic import SecretStr

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "hatchbot"
AGENT_ID_LABEL = "hatchbot.io/agent-id"
INSTALLATION_LABEL = "hatchbot.io/installation"
RUNTIME_PORT = 8080


def object_name(agent_id: str) -> str:
    """Every object of one agent is called `agent-<agent_id>`."""
    return f"agent-{agent_id}"


@dataclass(frozen=True)
class AgentSecrets:
    """What must never be logged: reaches pods only through a Kubernetes Secret or env.

    No provider key is ever here: an agent holds only its own gateway credential."""

    bot_token: SecretStr
    webhook_secret: SecretStr
    gateway_key: SecretStr | None = None


@dataclass(frozen=True)
class AgentSpec:
    """Everything a backend needs to run one agent (the runtime env contract, typed)."""

    agent_id: str
    secrets: AgentSecrets
    llm_model: str
    system_prompt: str
    llm_base_url: str | None = None  # the LLM gateway's /v1
    telegram_api_url: str = "https://api.telegram.org"
    history_limit: int = 20
    # The model sees images (LLM_VISION), from the provider catalogue; unknown: False.
    llm_vision: bool = False
    allowed_user_ids: tuple[int, ...] = ()
    # Names of the agent's MCP servers (MCP_SERVERS), reached through the gateway at
    # `{LLM_BASE_URL}/mcp/{name}`: no URL or token of theirs is ever in the spec.
    mcp_servers: tuple[str, ...] = ()
    # False keeps the workload at zero replicas / no process: re-applying a
    # stopped agent (reconcile) must not resume it.
    running: bool = True
    # Bumped on every change of prompt, model or key. Recorded on the workload, not in
    # the pod: pods roll when what they see changes (`config_hash`), so a new key,
    # which only the gateway sees, reaches the agent without a restart.
    revision: int = 1
    # The manager's installation id, stamped on every object: reconcile removes only
    # orphans that carry its own.
    installation: str = ""
    memory_idle_days: int = 30  # with a memory_url: when the process forgets an idle chat


def memory_url(spec: AgentSpec) -> str | None:
    """Where the agent keeps its conversations (MEMORY_URL): the gateway it talks to,
    with its own credential. None without a gateway: in the process only."""
    if spec.llm_base_url is None or spec.secrets.gateway_key is None:
        return None
    return f"{spec.llm_base_url.rstrip('/')}/memory"


class ObservedState(enum.StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    CRASH_LOOPING = "crash-looping"
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True)
class Observed:
    """What a backend sees of one agent right now."""

    agent_id: str
    state: ObservedState
    reason: str | None = None
    restarts: int = 0
    since: datetime | None = None
    # Where the runtime's /readyz and /metrics answer (Service DNS or 127.0.0.1:port).
    probe_url: str | None = None
    # What the running workload was made from (compared with `Backend.fingerprint(spec)`);
    # None: the backend cannot tell, and only the state is compared.
    fingerprint: str | None = None
    installation: str | None = None  # the stamp found on the objects (None: none)
    details: dict[str, str] = field(default_factory=dict)


class BackendError(Exception):
    """A backend operation failed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # the cluster API's answer (0: unreachable); None: not an API


class Backend(Protocol):
    """One interface, two implementations (kubernetes.py, local.py). All idempotent."""

    async def apply(self, spec: AgentSpec) -> None:
        """Create or update everything the agent needs; the same spec twice changes nothing."""

    def fingerprint(self, spec: AgentSpec) -> str | None:
        """What `Observed.fingerprint` reads once `spec` is applied (None: not tracked)."""

    async def restart(self, agent_id: str) -> None:
        """Restart the agent's process/pods (a rolling restart on Kubernetes)."""

    async def stop(self, agent_id: str) -> None:
        """Keep the agent's objects but run nothing."""

    async def delete(self, agent_id: str) -> None:
        """Remove every object of the agent; deleting what is gone is fine."""

    async def logs(self, agent_id: str, lines: int = 100) -> str:
        """The last `lines` lines of the agent's log (empty if none)."""

    async def observe(self, agent_id: str) -> Observed | None:
        """Observed state of one agent (None if the backend has nothing of it)."""

    async def observe_all(self) -> dict[str, Observed]:
        """Observed state of every agent this backend knows of, at a constant cost."""

    async def close(self) -> None:
        """Release clients and background tasks (local processes keep running)."""
