"""The manager under many users: N simulated users each go through /deploy at once.

Prints one JSON object:
{"users": n, "updates_per_s": x, "p50_ms": x, "p99_ms": x, "errors": n}
Latency is from a user's update to the bot's answer, for every wizard step but the
deploy itself (the backend's own wait). The manager is the real program
(`python -m manager_bot`, BACKEND=kubernetes, SQLite) in its own process; this
process runs the load: the fake Telegram, OpenAI and Kubernetes API servers and
the simulated users, so the generator's own work does not count as the manager's.
Usage: python bench/manager.py [--users 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager_bot.crypto import generate_key  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    PUBLIC_URL,
    polling,
    start_manager_process,
    stop_process,
)
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402
from tests.fakes.user import SimUser  # noqa: E402
from tests.fakes.waiting import wait_until  # noqa: E402


async def timed(latencies: list[float], action: Any, user: SimUser, expect: str) -> None:
    started = time.perf_counter()
    await action
    await user.wait_for(text_contains=expect, timeout=60)
    latencies.append((time.perf_counter() - started) * 1000)


async def one_user(
    telegram: FakeTelegram, manager_bot: Any, index: int, latencies: list[float]
) -> None:
    agent_bot = telegram.add_bot(username=f"bench{index:04d}_bot")
    user = telegram.user(manager_bot, first_name=f"User{index}")
    await timed(latencies, user.send("/deploy"), user, "Let's make your AI bot")
    await timed(latencies, user.press("I already have a bot", timeout=60), user, "Paste")
    await timed(latencies, user.send(agent_bot.token), user, "Got it")
    await timed(latencies, user.press("OpenAI · gpt-4o-mini", timeout=60), user, "Last step")
    await timed(latencies, user.send("You are a benchmark."), user, "Ready to deploy")
    await user.press("Deploy", timeout=60)
    await user.wait_for(text_contains="is live", timeout=120)


async def main(users: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            FakeTelegram() as telegram,
            FakeOpenAI() as llm,
            FakeKubernetes(auto_ready=True) as kube,
        ):
            kube.put_object("namespaces", {"metadata": {"name": "agents"}})
            kubeconfig = kube.write_kubeconfig(Path(scratch) / "kubeconfig")
            manager_bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
            process = await start_manager_process(
                telegram, manager_bot, Path(scratch),
                BACKEND="kubernetes", PUBLIC_URL=PUBLIC_URL, KUBECONFIG=str(kubeconfig),
                OPENAI_API_KEY="sk-benchbenchbenchbench00", OPENAI_BASE_URL=llm.url,
                MAX_AGENTS_PER_USER="3", METRICS_PORT="0", HEALTH_INTERVAL="3600",
                ENCRYPTION_KEYS=generate_key(),
            )  # fmt: skip
            try:
                await wait_until(lambda: polling(telegram, manager_bot), timeout=60)
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(one_user(telegram, manager_bot, index, latencies) for index in range(users)),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
                errors = sum(isinstance(result, BaseException) for result in results)
            finally:
                await stop_process(process)
    latencies.sort()
    return {
        "users": users,
        "updates_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1)
        if latencies
        else None,
        "errors": errors,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args().users))))
