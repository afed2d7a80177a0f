"""Agents' pods as the manager's health sweep sees them: /readyz and /metrics per agent.

The fake Kubernetes API server plays the kubelet for objects; this plays the
runtime inside each pod. Reached at `<url>/agent-<id>/...` (ClusterConfig.probe_base),
because the Service's cluster DNS name does not resolve on a test machine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.fakes.loopback import serve_on_loopback


class FakeAgentPods:
    def __init__(self) -> None:
        self.url = ""
        self.unready: set[str] = set()  # object names whose /readyz fails
        self.llm_errors: dict[str, dict[str, float]] = {}  # name -> kind -> timestamp
        self.llm_success: dict[str, float] = {}
        self.probes = 0
        self._runner: web.AppRunner | None = None

    def fail_llm(self, name: str, kind: str) -> None:
        """The agent's last LLM call failed with `kind` (auth, rate_limit, other)."""
        self.llm_errors.setdefault(name, {})[kind] = time.time()

    def succeed_llm(self, name: str) -> None:
        self.llm_success[name] = time.time()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}/readyz", self._readyz)
        app.router.add_get("/{name}/metrics", self._metrics)
        self._runner, self.url = await serve_on_loopback(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _readyz(self, request: web.Request) -> web.Response:
        self.probes += 1
        if request.match_info["name"] in self.unready:
            return web.Response(status=503, text="not ready\n")
        return web.Response(text="ready\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        lines = [
            "# TYPE hatchbot_agent_last_llm_success_timestamp_seconds gauge",
            f"hatchbot_agent_last_llm_success_timestamp_seconds {self.llm_success.get(name, 0.0)}",
            "# TYPE hatchbot_agent_last_llm_error_timestamp_seconds gauge",
        ]
        for kind, at in self.llm_errors.get(name, {}).items():
            lines.append(f'hatchbot_agent_last_llm_error_timestamp_seconds{{kind="{kind}"}} {at}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@pytest.fixture
async def agent_pods() -> AsyncIterator[FakeAgentPods]:
    pods = FakeAgentPods()
    await pods.start()
    yield pods
    await pods.stop()
