"""The manager's background jobs (APScheduler 3, AsyncIOScheduler).

Each job runs at most once at a time (max_instances=1, coalesced), survives its
own failures (logged, admins told once, retried at the next interval) and is
waited for when the manager stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from manager_bot.backends.base import BackendError
from manager_bot.logs import new_request_id
from manager_bot.services.agent_memory import AgentMemory
from manager_bot.services.health import HealthMonitor, SweepReport
from manager_bot.services.notices import NoticeSender
from manager_bot.services.notifications import Notifier
from manager_bot.services.reconciler import Reconciler
from runtime.tasks import cancel_all, cancel_and_wait

log = logging.getLogger(__name__)
RECONCILE_INTERVAL = 600  # orphans and drift the health sweep does not cover
MEMORY_INTERVAL = 3600  # idle conversations are dropped with a day's precision at best
NOTICES_INTERVAL = 5  # the outbox: budget notices, health alerts, admins' messages
STOP_TIMEOUT = 20.0


class Scheduler:
    def __init__(
        self,
        *,
        monitor: HealthMonitor,
        notifier: Notifier,
        notices: NoticeSender,
        reconciler: Reconciler,
        health_interval: int,
        memory: AgentMemory | None = None,
    ) -> None:
        self._monitor = monitor
        self._notifier = notifier
        self._notices = notices
        self._reconciler = reconciler
        self._interval = health_interval
        self._memory = memory
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        # A fresh APScheduler each time: a replica that lost leadership starts again when
        # it wins it back (a shut-down one still holds its old jobs).
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        first = datetime.now(UTC) + timedelta(seconds=self._interval)
        common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": self._interval}
        self._scheduler.add_job(
            self.health_check, "interval", seconds=self._interval, id="health",
            next_run_time=first, **common,
        )  # fmt: skip
        self._scheduler.add_job(
            self.reconcile, "interval", seconds=RECONCILE_INTERVAL, id="reconcile", **common
        )
        self._scheduler.add_job(
            self.deliver_notices, "interval", seconds=NOTICES_INTERVAL, id="notices",
            **{**common, "misfire_grace_time": NOTICES_INTERVAL},
        )  # fmt: skip
        if self._memory is not None:
            self._scheduler.add_job(
                self.forget_idle_conversations, "interval", seconds=MEMORY_INTERVAL,
                id="memory", **common,
            )  # fmt: skip
        self._scheduler.start()

    async def stop(self) -> None:
        """No new runs; the one in flight may finish (bounded), then it is cancelled."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        running = self._running - {asyncio.current_task()}
        if running:
            _, pending = await asyncio.wait(running, timeout=STOP_TIMEOUT)
            for task in pending:
                await cancel_and_wait(task)

    async def halt(self) -> None:
        """Leadership lost: no new runs, and the ones in flight are cancelled at once, before
        another replica may start them (leader.py)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # a run submitted just before has begun (and is tracked)
        # The runs' ends are absorbed, a cancellation of the caller is not.
        await cancel_all(self._running - {asyncio.current_task()})

    async def health_check(self) -> SweepReport | None:
        """One sweep and its notifications; what the scheduler runs every HEALTH_INTERVAL."""
        with self._tracked():
            return await self._health_check()

    async def _health_check(self) -> SweepReport | None:
        new_request_id()
        try:
            report = await self._monitor.sweep()
        except BackendError as error:
            log.warning("health sweep could not read the agents: %s", error)
            await self._notifier.sweep_failed(str(error))
            return None
        except Exception:
            log.exception("health sweep failed")
            await self._notifier.sweep_failed("an unexpected error (see the manager's log)")
            return None
        await self._notifier.sweep_succeeded()
        sent = await self._notifier.notify(report.transitions)
        changed = bool(report.transitions or sent or report.repaired or report.gave_up)
        # One line per sweep; at INFO only when something changed (one every HEALTH_INTERVAL
        # would bury the lines that matter), the rest at DEBUG.
        log.log(
            logging.INFO if changed else logging.DEBUG,
            "health sweep: %d agents in %.2fs, %d changes, %d messages, %d repaired, %d stopped",
            report.swept, report.seconds, len(report.transitions), sent, len(report.repaired),
            len(report.gave_up),
        )  # fmt: skip
        return report

    async def deliver_notices(self) -> int:
        """Send what the outbox owes; a failure leaves it owed for the next run."""
        with self._tracked():
            try:
                return await self._notices.deliver()
            except Exception:
                log.exception("delivering notices failed; they stay owed")
                return 0

    async def forget_idle_conversations(self) -> int:
        """Agents' chats idle for MEMORY_IDLE_DAYS are dropped (hourly)."""
        if self._memory is None:
            return 0
        with self._tracked():
            try:
                return await self._memory.forget_idle()
            except Exception:  # the next run tries again; nothing else depends on it
                log.exception("forgetting idle conversations failed")
                return 0

    async def reconcile(self) -> None:
        with self._tracked():
            await self._reconcile()

    async def _reconcile(self) -> None:
        new_request_id()
        try:
            report = await self._reconciler.reconcile()
        except BackendError as error:
            log.warning("reconcile could not read the agents: %s", error)
            return
        if report.applied or report.removed:
            log.info("reconciled: applied %s, removed %s", report.applied, report.removed)

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """While a job runs, `stop` waits for it."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._running.discard(task)
