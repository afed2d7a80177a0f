"""The manager's own HTTP endpoints: /healthz, /readyz and /metrics (Prometheus text).

Kept apart from Telegram traffic (the manager polls; it serves no webhook), on
METRICS_HOST:METRICS_PORT, for kubelet probes and Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from manager_bot.metrics import set_agent_counts

log = logging.getLogger(__name__)
AgentCounts = Callable[[], Awaitable[dict[tuple[str, str], int]]]
COUNT_TIMEOUT = 5.0


class StatusServer:
    """Readiness is set by the manager once it has migrated, reconciled and begun polling."""

    def __init__(self, *, agent_counts: AgentCounts) -> None:
        self.ready = False
        self._agent_counts = agent_counts
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
        return web.Response(text="starting\n", status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            set_agent_counts(await asyncio.wait_for(self._agent_counts(), COUNT_TIMEOUT))
        except Exception:  # a slow or failing database must not break the scrape
            log.warning("agent counts unavailable for /metrics", exc_info=True)
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
