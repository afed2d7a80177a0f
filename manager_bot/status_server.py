"""The manager's own HTTP endpoints: /healthz, /readyz and /metrics (Prometheus text),
and the start-up they report on.

Kept apart from Telegram traffic (the manager polls; it serves no webhook), on
METRICS_HOST:METRICS_PORT, for kubelet probes and Prometheus scrapes. They are
served before anything else starts, so kubelet sees a live process that is not
ready yet while start-up waits for the database, the cluster or Telegram.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import exc as sql_errors

from manager_bot.backends.base import BackendError
from manager_bot.flood_control import paced_by_caller
from manager_bot.metrics import set_agent_counts
from runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)
AgentCounts = Callable[[], Awaitable[dict[tuple[str, str], int]]]
COUNT_TIMEOUT = 5.0
T = TypeVar("T")


class StatusServer:
    """Readiness is set by the manager once it has migrated, reconciled (or stopped
    waiting for the cluster) and begun polling."""

    def __init__(self, *, agent_counts: AgentCounts | None = None) -> None:
        self.ready = False
        self.waiting_for = ""  # the start-up step not done yet, shown by /readyz
        # Set once the database is there: /metrics has no agent counts before.
        self.agent_counts = agent_counts
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real one when `port` is 0
        log.info("status endpoints on http://%s:%d (/healthz /readyz /metrics)", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        waiting = f": waiting for {self.waiting_for}" if self.waiting_for else ""
        return web.Response(text=f"starting{waiting}\n", status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.agent_counts is not None:
            try:
                async with asyncio.timeout(COUNT_TIMEOUT):
                    counts = await self.agent_counts()
                set_agent_counts(counts)
            except Exception:  # a slow or failing database must not break the scrape
                log.warning("agent counts unavailable for /metrics", exc_info=True)
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class StartupStopped(Exception):
    """SIGINT or SIGTERM came while start-up was still waiting."""


class StepPostponed(Exception):
    """A step did not succeed within its patience; the caller decides what follows."""


def is_transient(error: BaseException) -> bool:
    """Trouble that may pass by itself: worth waiting for rather than exiting.

    The database not up yet (refused, unresolvable, not created yet, starting up), the
    Kubernetes API unreachable or answering 5xx/429, Telegram answering 5xx/429 or not
    at all. A mistake (a bad token, a migration's own SQL error, a bug) is not.
    """
    if isinstance(error, BackendError):
        return error.retryable
    if isinstance(
        error,
        sql_errors.ProgrammingError | sql_errors.IntegrityError | sql_errors.DataError,
    ):
        return False
    return isinstance(
        error,
        OSError  # refused, unreachable, timed out, a SQLite folder not writable yet
        | sql_errors.DBAPIError  # the driver's errors: no such database, starting up...
        | TelegramNetworkError
        | TelegramServerError
        | TelegramRetryAfter
        | ClientDecodeError  # a proxy's HTML error page in front of the Bot API
        | aiohttp.ClientError,
    )


def describe(error: BaseException) -> str:
    """One short line: SQLAlchemy's messages run over several."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


class Startup:
    """Start-up steps, each retried with backoff until it works or the manager is stopped.

    Transient trouble at start (the database not up yet, the cluster or Telegram
    answering 5xx) must not crash the process: kubelet would restart it in a loop,
    each restart starting over. Each failure is one log line naming the step, and
    /readyz says which step start-up waits for. SIGINT and SIGTERM end the waiting
    (and a step in flight) at once: `run` raises StartupStopped.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, *, status: StatusServer, first_delay: float = 0.5, max_delay: float = 30.0
    ) -> None:
        self._status = status
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def handle_signals(self) -> None:
        """Until polling starts (aiogram then installs its own handlers for both)."""
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.warning("received %s during start-up: stopping", sig.name)
        self.stop()

    async def run(
        self, step: str, action: Callable[[], Awaitable[T]], *, patience: float | None = None
    ) -> T:
        """`action()` until it succeeds; a non-transient error is raised at once.

        With `patience` (seconds), StepPostponed is raised once that has passed
        without success, instead of trying forever.
        """
        if self.stopping:
            raise StartupStopped
        self._status.waiting_for = step
        started = time.monotonic()
        delay = self._first_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                with paced_by_caller():  # a 429 is waited out here, with the patience
                    result = await self._unless_stopped(action())
            except StartupStopped:
                raise
            except Exception as error:
                if not is_transient(error):
                    raise
                wait = delay
                if isinstance(error, TelegramRetryAfter):  # Telegram says how long
                    wait = max(wait, float(error.retry_after))
                if patience is not None and time.monotonic() - started + wait > patience:
                    log.warning(
                        "start-up: %s failed (%s); not waiting longer", step, describe(error)
                    )
                    raise StepPostponed(step) from None
                log.warning(
                    "start-up: %s failed (%s); attempt %d, next in %.1fs",
                    step, describe(error), attempt, wait,
                )  # fmt: skip
                await self._sleep(wait)
                delay = min(delay * 2, self._max_delay)
                continue
            if attempt > 1:
                log.info("start-up: %s done after %d attempts", step, attempt)
            if self._status.waiting_for == step:  # a step retried beside polling may end later
                self._status.waiting_for = ""
            return result

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """The step's own await, abandoned (cancelled) if a stop comes first."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                with contextlib.suppress(Exception):
                    await cancel_and_wait(task)
        if task.cancelled() or not task.done():
            raise StartupStopped
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        if self.stopping:
            raise StartupStopped
