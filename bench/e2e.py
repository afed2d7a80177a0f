"""From the Deploy tap to a live bot, and to its first answer, on every backend.

Prints one JSON line:
{"local": {"tap_to_live_s", "first_reply_s"},
 "kubernetes-istio": {...}, "kubernetes-gateway-api": {...},
 "baseline": {"runtime_ready_s"}, "rounds": n}

- tap_to_live_s: from pressing Deploy to the manager's "is live" message (median of rounds).
- first_reply_s: from then to the agent's first answer arriving in the user's chat.
- baseline.runtime_ready_s: one bare `python -m runtime` from exec to its first /readyz 200,
  measured in the same run: a pod start on the fake cluster is such a process start,
  so tap_to_live_s / runtime_ready_s is the platform's own overhead, whatever the machine.
Everything runs through the fakes (Telegram, OpenAI, the Kubernetes API server with its
kubelet, ingress and NetworkPolicy), the manager wired as `python -m manager_bot` wires it.
Target: tap to live within 2 s on every backend.
Usage: python bench/e2e.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.startup import runtime_ready  # noqa: E402
from manager_bot.backends.local import LocalBackend  # noqa: E402
from manager_bot.services.health import HealthConfig  # noqa: E402
from tests.e2e.conftest import Manager, paste_token, start_manager  # noqa: E402
from tests.e2e.test_on_kubernetes import running_cluster  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402


async def one_round(manager: Manager, telegram: FakeTelegram, index: int) -> tuple[float, float]:
    """A new user deploys a new bot by paste; (tap to live, live to first reply) in seconds."""
    user = telegram.user(manager.fake, first_name=f"Bench{index}")
    username = f"bench_{index}_bot"
    await paste_token(user, telegram, username)
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send("You are a benchmark.")
    await user.wait_for(text_contains="Ready to deploy")
    tapped = time.perf_counter()
    await user.press("Deploy")
    await user.wait_for(text_contains=f"@{username} is live", timeout=120)
    live = time.perf_counter()
    friend = telegram.user(telegram.bot(username), first_name="Friend")
    await friend.send("ping")
    await friend.wait_for(text_contains="echo: ping", timeout=60)
    return live - tapped, time.perf_counter() - live


async def measure(manager: Manager, telegram: FakeTelegram, rounds: int) -> dict[str, float]:
    results = [await one_round(manager, telegram, index) for index in range(rounds)]
    return {
        "tap_to_live_s": round(statistics.median(r[0] for r in results), 3),
        "first_reply_s": round(statistics.median(r[1] for r in results), 3),
    }


@asynccontextmanager
async def local_manager(
    telegram: FakeTelegram, openai_server: FakeOpenAI, scratch: Path
) -> AsyncIterator[Manager]:
    backend = LocalBackend(data_dir=scratch)
    try:
        async for manager in start_manager(
            telegram=telegram, openai_server=openai_server, backend=backend,
            url=f"sqlite+aiosqlite:///{scratch / 'hatchbot.db'}",
            env={"OPENAI_API_KEY": "sk-benchbenchbenchbench00"},
            health=HealthConfig(webhook_mode=False),
        ):  # fmt: skip
            yield manager
    finally:
        await backend.shutdown_agents()


async def main(rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": rounds}
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        async with FakeTelegram() as telegram, FakeOpenAI() as openai_server:
            baseline = [await runtime_ready(telegram, openai_server) for _ in range(rounds)]
            result["baseline"] = {"runtime_ready_s": round(statistics.median(baseline), 3)}
            local_dir = scratch / "local"
            local_dir.mkdir()
            async with local_manager(telegram, openai_server, local_dir) as manager:
                result["local"] = await measure(manager, telegram, rounds)
        for router in ("istio", "gateway-api"):
            cluster_dir = scratch / router
            cluster_dir.mkdir()
            database_url = f"sqlite+aiosqlite:///{cluster_dir / 'hatchbot.db'}"
            async with (
                FakeTelegram() as telegram,
                FakeOpenAI() as openai_server,
                running_cluster(
                    router, telegram=telegram, openai_server=openai_server,
                    database_url=database_url, scratch=cluster_dir,
                ) as cluster,
            ):  # fmt: skip
                result[f"kubernetes-{router}"] = await measure(cluster.manager, telegram, rounds)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(json.dumps(asyncio.run(main(arguments.rounds))))
