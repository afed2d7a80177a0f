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
from manager_bot.services.health import HealthMonitor, SweepReport
from manager_bot.services.notices import NoticeSender
from manager_bot.services.notifications import Notifier
from manager_bot.services.reconciler import Reconciler

log = logging.getLogger(__name__)
RECONCILE_INTERVAL = 600  # orphans and drift the health sweep does not cover
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
    ) -> None:
        self._monitor = monitor
        self._notifier = notifier
        self._notices = notices
        self._reconciler = reconciler
        self._interval = health_interval
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: set[asyncio.Task[object]] = set()

    def start(self) -> None:
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
        self._scheduler.start()

    async def stop(self) -> None:
        """No new runs; the one in flight may finish (bounded), then it is cancelled."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        running = self._running - {asyncio.current_task()}
        if running:
            _, pending = await asyncio.wait(running, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

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
        log.info(
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
