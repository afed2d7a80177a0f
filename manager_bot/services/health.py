"""Health: what each running agent's state is, derived from what can be seen of it.

A sweep reads the backend once (`observe_all`), probes every running agent
(`/readyz`, `/metrics`, the bot's `getWebhookInfo`) concurrently with a bound,
derives a verdict per agent with the pure `assess`, repairs what can be
repaired (a missing workload, a wrong webhook), gives up on agents that crash
for too long, stores verdicts that changed in one statement, and returns the
transitions for the notifier. A sweep that cannot read the backend changes
nothing: an unreachable cluster is not 2,000 agents down.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from manager_bot.backends.base import Backend, BackendError, Observed, ObservedState
from manager_bot.db.models import Agent, as_utc
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.metrics import HEALTH_SWEEP_LAST_SUCCESS, HEALTH_SWEEP_SECONDS, HEALTH_SWEEPS
from manager_bot.services.deployer import Deployer
from manager_bot.services.health_reasons import HealthKind
from manager_bot.services.reconciler import Reconciler
from manager_bot.services.telegram import AgentTokenError, WebhookStatus
from manager_bot.services.usage import metrics_text

log = logging.getLogger(__name__)


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class HealthConfig:
    webhook_mode: bool  # Kubernetes: the manager owns a webhook; local agents poll
    expected_webhook: str = ""  # PUBLIC_URL/webhook/ (the agent id is appended)
    probe_timeout: float = 3.0
    concurrency: int = 64
    start_grace: timedelta = timedelta(minutes=5)  # "starting" for longer is down
    give_up_after: timedelta = timedelta(minutes=15)  # crash-looping for longer: stop it
    webhook_error_window: float = 600.0  # a delivery error this recent, with a backlog
    backlog: int = 100  # pending updates that mean the agent is falling behind
    rate_limit_window: float = 600.0


@dataclass(frozen=True)
class Probe:
    """What a sweep saw of one agent beyond the backend's view."""

    ready: bool | None = None  # None: not probed (not running, or no address)
    metrics: dict[str, float] = field(default_factory=dict)
    webhook: WebhookStatus | None = None
    token_rejected: bool = False


@dataclass(frozen=True)
class Verdict:
    health: Health
    kind: str  # a HealthKind: a change of kind is news, a change of wording is not
    reason: str = ""


@dataclass(frozen=True)
class Transition:
    agent: Agent
    before: Health | None
    after: Verdict


METRIC_NAMES = {
    "hatchbot_agent_last_llm_success_timestamp_seconds": "llm_ok_at",
    "hatchbot_agent_last_llm_error_timestamp_seconds": "llm_error_at",
}
HEALTHY = Verdict(Health.HEALTHY, HealthKind.OK)


def parse_probe_metrics(text: str) -> dict[str, float]:
    """{"llm_ok_at": t, "llm_error_at:auth": t, ...} from a runtime's /metrics."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = METRIC_NAMES.get(sample.name)
            if name is None:
                continue
            kind = sample.labels.get("kind")
            found[f"{name}:{kind}" if kind else name] = sample.value
    return found


def assess(
    agent_id: str,
    observed: Observed | None,
    probe: Probe,
    *,
    config: HealthConfig,
    now: datetime,
    previous_pending: int | None = None,
) -> Verdict | None:
    """The verdict for one agent that should be running; None while it is still starting."""
    if observed is None or observed.state is ObservedState.MISSING:
        return Verdict(Health.DOWN, HealthKind.MISSING, "its workload is missing")
    if observed.state is ObservedState.CRASH_LOOPING:
        return Verdict(Health.DOWN, HealthKind.CRASH_LOOP, observed.reason or "it keeps crashing")
    if observed.state is ObservedState.STOPPED:
        return Verdict(Health.DOWN, HealthKind.STOPPED, "its workload is scaled to zero")
    if observed.state is ObservedState.STARTING:
        if observed.since is not None and now - observed.since > config.start_grace:
            minutes = int(config.start_grace.total_seconds() // 60)
            return Verdict(Health.DOWN, HealthKind.NOT_READY, f"not ready after {minutes} minutes")
        return None
    if probe.ready is False:
        return Verdict(Health.DOWN, HealthKind.NOT_ANSWERING, "it does not answer its health check")
    if probe.token_rejected:
        return Verdict(
            Health.DOWN, HealthKind.TOKEN, "Telegram rejects its token (revoked in @BotFather?)"
        )
    webhook = probe.webhook
    epoch = now.timestamp()
    if webhook is not None:
        recent_error = (
            webhook.last_error_date is not None
            and epoch - webhook.last_error_date < config.webhook_error_window
        )
        if recent_error and webhook.pending_update_count > 0:
            message = webhook.last_error_message or "delivery failed"
            return Verdict(
                Health.DEGRADED, HealthKind.WEBHOOK, f"Telegram cannot deliver: {message}"
            )
        growing = previous_pending is None or webhook.pending_update_count >= previous_pending
        if webhook.pending_update_count >= config.backlog and growing:
            return Verdict(
                Health.DEGRADED,
                HealthKind.BACKLOG,
                f"{webhook.pending_update_count} messages are waiting to be answered",
            )
    metrics = probe.metrics
    ok_at = metrics.get("llm_ok_at", 0.0)
    if metrics.get("llm_error_at:auth", 0.0) > ok_at:
        return Verdict(Health.DEGRADED, HealthKind.LLM_KEY, "the LLM provider rejects its API key")
    rate_limited_at = metrics.get("llm_error_at:rate_limit", 0.0)
    if rate_limited_at > ok_at and epoch - rate_limited_at < config.rate_limit_window:
        return Verdict(
            Health.DEGRADED, HealthKind.LLM_RATE_LIMIT, "the LLM provider is rate-limiting it"
        )
    return HEALTHY


@dataclass
class SweepReport:
    swept: int = 0
    transitions: list[Transition] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)
    seconds: float = 0.0


class HealthMonitor:
    """Runs sweeps; one at a time (a sweep never overlaps itself)."""

    def __init__(
        self, *, database: Database, backend: Backend, deployer: Deployer, config: HealthConfig
    ) -> None:
        self._db = database
        self._backend = backend
        self._deployer = deployer
        # Repairs go through the reconciler: under the agent's lock, from its row as it is
        # then, not as this sweep read it (the user may have stopped it meanwhile).
        self._reconciler = Reconciler(database=database, backend=backend, deployer=deployer)
        self._config = config
        self._lock = asyncio.Lock()
        self._pending: dict[str, int] = {}  # last sweep's backlog per agent

    async def sweep(self) -> SweepReport:
        """One sweep; raises BackendError when the backend cannot be read (nothing changed)."""
        async with self._lock:
            started = time.perf_counter()
            report = SweepReport()
            try:
                await self._sweep(report)
            except Exception:
                HEALTH_SWEEPS.labels("failed").inc()
                raise
            finally:
                report.seconds = time.perf_counter() - started
                HEALTH_SWEEP_SECONDS.observe(report.seconds)
            HEALTH_SWEEPS.labels("ok").inc()
            HEALTH_SWEEP_LAST_SUCCESS.set_to_current_time()
            return report

    async def _sweep(self, report: SweepReport) -> None:
        async with self._db.session() as session:
            agents = list(await Repositories(session).agents.running())
        observed = await self._backend.observe_all()
        now = datetime.now(UTC)
        timeout = aiohttp.ClientTimeout(total=self._config.probe_timeout)
        limit = asyncio.Semaphore(self._config.concurrency)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            probes = await asyncio.gather(
                *(self._probe(agent, observed.get(agent.id), http, limit) for agent in agents)
            )
        changes: list[dict[str, object]] = []
        for agent, probe in zip(agents, probes, strict=True):
            seen = observed.get(agent.id)
            verdict = assess(
                agent.id,
                seen,
                probe,
                config=self._config,
                now=now,
                previous_pending=self._pending.get(agent.id),
            )
            if probe.webhook is not None:
                self._pending[agent.id] = probe.webhook.pending_update_count
            verdict = await self._heal(agent, seen, probe, verdict, now, report)
            row = self._changed(agent, seen, verdict, now)
            if row is not None:
                changes.append(row)
            if verdict is not None and _differs(agent, verdict):
                before = Health(agent.health) if agent.health else None
                report.transitions.append(Transition(agent, before, verdict))
        if changes:
            async with self._db.session() as session:
                await Repositories(session).agents.update_many(changes)
        report.swept = len(agents)

    async def _probe(
        self,
        agent: Agent,
        seen: Observed | None,
        http: aiohttp.ClientSession,
        limit: asyncio.Semaphore,
    ) -> Probe:
        if seen is None or seen.state is not ObservedState.RUNNING:
            return Probe()
        async with limit:
            ready: bool | None = None
            metrics: dict[str, float] = {}
            if seen.probe_url:
                ready = await _get_ok(http, f"{seen.probe_url}/readyz")
                text = await metrics_text(http, seen.probe_url) if ready else None
                with contextlib.suppress(ValueError):  # not Prometheus text: no figures
                    metrics = parse_probe_metrics(text) if text else {}
            try:
                webhook = await self._deployer.queries.webhook_status(agent)
            except AgentTokenError as error:
                if error.reason == AgentTokenError.INVALID:
                    return Probe(ready=ready, metrics=metrics, token_rejected=True)
                log.info("webhook of agent %s unreadable: %s", agent.id, error.reason)
                webhook = None
            return Probe(ready=ready, metrics=metrics, webhook=webhook)

    async def _heal(
        self,
        agent: Agent,
        seen: Observed | None,
        probe: Probe,
        verdict: Verdict | None,
        now: datetime,
        report: SweepReport,
    ) -> Verdict | None:
        """Repair what the manager can; give up on an agent that has crashed for too long."""
        if verdict is not None and verdict.kind in (HealthKind.MISSING, HealthKind.STOPPED):
            try:
                if await self._reconciler.converge(agent.id, seen):
                    await self._deployer.audit_system("repair", agent.id, "workload re-applied")
            except BackendError as error:
                log.warning("could not re-apply agent %s: %s", agent.id, error)
                return verdict
            # Repaired quietly: the next sweep judges the new workload.
            report.repaired.append(agent.id)
            return None
        if verdict is not None and verdict.kind == HealthKind.CRASH_LOOP:
            since = agent.health_at if agent.health_kind == HealthKind.CRASH_LOOP else now
            if since is not None and now - as_utc(since) > self._config.give_up_after:
                if not await self._reconciler.give_up(agent.id, verdict.reason):
                    return None  # no longer wanted running: nothing to give up on
                report.gave_up.append(agent.id)
                return Verdict(Health.DOWN, HealthKind.GAVE_UP, verdict.reason)
            return verdict
        webhook = probe.webhook
        if webhook is not None and self._webhook_wrong(agent.id, webhook):
            try:
                await self._reconciler.repair_webhook(agent.id)
                report.repaired.append(agent.id)
            except Exception as error:
                log.warning("could not repair the webhook of agent %s: %s", agent.id, error)
                return Verdict(Health.DEGRADED, HealthKind.WEBHOOK, "its webhook cannot be set")
        return verdict

    def _webhook_wrong(self, agent_id: str, webhook: WebhookStatus) -> bool:
        if not self._config.webhook_mode:
            return webhook.url != ""  # a local agent polls: a webhook would stop it
        return webhook.url != f"{self._config.expected_webhook}{agent_id}"

    def _changed(
        self, agent: Agent, seen: Observed | None, verdict: Verdict | None, now: datetime
    ) -> dict[str, object] | None:
        row: dict[str, object] = {"id": agent.id}
        state = seen.state.value if seen is not None else ObservedState.MISSING.value
        reason = seen.reason if seen is not None else None
        if (state, reason) != (agent.observed_state, agent.observed_reason):
            row.update(observed_state=state, observed_reason=reason, observed_at=now)
        if verdict is not None and _differs(agent, verdict):
            # The raw reason is for the log (and the row); owners read it in plain words.
            log.info(
                "agent %s is %s (%s): %s", agent.id, verdict.health, verdict.kind, verdict.reason
            )
            row.update(
                health=verdict.health.value,
                health_kind=verdict.kind,
                health_reason=verdict.reason[:256],
                health_at=now,
            )
        return row if len(row) > 1 else None


def _differs(agent: Agent, verdict: Verdict) -> bool:
    """A verdict is news when its health or kind differs from the stored one."""
    return (verdict.health, verdict.kind) != (agent.health, agent.health_kind)


async def _get_ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
