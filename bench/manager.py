"""The manager under many users: N simulated people each go through /deploy at once.

Prints one JSON object:
{"users": n, "think_s": [a, b], "spawn_per_s": r, "updates_per_s": x, "p50_ms": x,
 "p99_ms": x, "errors": n, "manager_cpu_ms_per_update": x,
 "manager_loop_cpu_ms_per_update": x, "generator_cpu_ms_per_update": x,
 "baseline_aiogram_cpu_ms_per_update": x, "baseline_errors": n, "manager_vs_baseline": x}

Load model (Locust's): users start `--spawn-rate` per second and, like people, read
each answer before the next tap, waiting a random `--think` seconds (default 1 to 5,
Locust's own example). With the defaults all 200 are in the wizard together.
`--think 0 0 --spawn-rate 0` is a burst instead: every user acts the instant the bot
answers, all starting at once, which no crowd of people does; it measures throughput.

Latency is from a user's update to the bot's answer, for every wizard step but the
deploy itself (the backend's own wait). The CPU figures (user + system time of each
process over the run, per timed update, deploys included in the work) hold better
than latencies on a noisy machine, and show whether the load generator, which shares
the machine, is the one out of breath; the manager's "loop" figure is its main thread (the
event loop), the rest its worker threads. The manager is the real program
(`python -m manager_bot`, BACKEND=kubernetes, SQLite) in its own process; this
process runs the fake Telegram, OpenAI and Kubernetes API servers and the users.

Warm-up: the manager builds aiogram's models the first time it uses them (about a
second of CPU, manager_bot/lazy_aiogram.py), so one extra user goes through the whole
wizard and deploy before the clock and the CPU counters start; it counts nowhere.

Baseline: these machines differ twofold from day to day, so the same run then measures
a bare aiogram bot (bench/aiogram_echo.py, polling the same fake Telegram) that answers
each message with one sendMessage (on asyncio's own event loop, as aiogram's examples
run; the manager runs on uvloop, its default EVENT_LOOP): after a warm-up, as many
users as above each send it 5 messages in the same load model. "manager_vs_baseline" (the manager's CPU per update
in times the bare bot's) is the figure that holds across machines; --no-baseline skips it.
Usage: python bench/manager.py [--users 200] [--think 1 5] [--spawn-rate 10] [--seed 1]
                               [--profile FILE]  (cProfile of the manager's event loop)
                               [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manager_bot.crypto import generate_key  # noqa: E402
from tests.e2e.conftest import (  # noqa: E402
    PUBLIC_URL,
    interrupt,
    polling,
    start_manager_process,
    stop_process,
)
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeBot, FakeTelegram  # noqa: E402
from tests.fakes.user import SimUser  # noqa: E402
from tests.fakes.waiting import wait_until  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process's main thread (its event loop) so far; the
    rest of `cpu_seconds` is its worker threads (none on the hot path any more)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# With --profile: put first on the manager's PYTHONPATH, it profiles the manager's event
# loop (its main thread) between SIGUSR1 and SIGUSR2, so start-up and shutdown stay out.
PROFILE_HOOK = """
import cProfile, os, signal
_profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: _profile.enable())
def _dump(*_):
    _profile.disable()
    _profile.dump_stats(os.environ["BENCH_PROFILE"] + ".part")
    os.replace(os.environ["BENCH_PROFILE"] + ".part", os.environ["BENCH_PROFILE"])
signal.signal(signal.SIGUSR2, _dump)
"""


def profiling_env(scratch: Path, profile: Path | None) -> dict[str, str]:
    """The manager's environment for --profile: PROFILE_HOOK first on its path."""
    if profile is None:
        return {}
    hook = scratch / "profile_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROFILE_HOOK)
    return {"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "BENCH_PROFILE": str(profile.resolve())}


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def timed(latencies: list[float], action: Any, user: SimUser, expect: str) -> None:
    started = time.perf_counter()
    await action
    await user.wait_for(text_contains=expect, timeout=60)
    latencies.append((time.perf_counter() - started) * 1000)


async def one_user(
    telegram: FakeTelegram, manager_bot: Any, name: str, latencies: list[float],
    start_at: float, think: Callable[[], float],
) -> None:  # fmt: skip
    """One person's /deploy, from the first message to "is live", as `name`."""
    await asyncio.sleep(start_at)
    agent_bot = telegram.add_bot(username=f"{name.lower()}_bot")
    user = telegram.user(manager_bot, first_name=name)
    steps: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: user.send("/deploy"), "Let's make your AI bot"),
        (lambda: user.press("I already have a bot", timeout=60), "Paste"),
        (lambda: user.send(agent_bot.token), "Got it"),
        (lambda: user.press("OpenAI · gpt-4o-mini", timeout=60), "Last step"),
        (lambda: user.send("You are a benchmark."), "Ready to deploy"),
    ]
    for number, (action, expect) in enumerate(steps):
        if number:
            await asyncio.sleep(think())
        await timed(latencies, action(), user, expect)
    await asyncio.sleep(think())
    await user.press("Deploy", timeout=60)
    await user.wait_for(text_contains="is live", timeout=120)


ECHO_MESSAGES = 5  # per baseline user, as many as the wizard's timed steps
ECHO_WARMUP_MESSAGES = 5


async def echo_user(
    telegram: FakeTelegram, echo_bot: FakeBot, *, start_at: float, think: Callable[[], float],
    messages: int = ECHO_MESSAGES,
) -> None:  # fmt: skip
    """One person sending the echo bot `messages` messages, each after the last's echo."""
    await asyncio.sleep(start_at)
    user = telegram.user(echo_bot)
    for number in range(messages):
        if number:
            await asyncio.sleep(think())
        await user.send(f"hello {number}")
        await user.wait_for(text_contains=f"echo: hello {number}", timeout=60)


async def measure_baseline(
    telegram: FakeTelegram, scratch: Path, *, users: int, think: tuple[float, float],
    spawn_rate: float, seed: int,
) -> tuple[float, int]:  # fmt: skip
    """CPU ms per answered message of a bare aiogram polling bot (bench/aiogram_echo.py)
    under the same load model, and how many of its users failed."""
    echo_bot = telegram.add_bot(username="echo_baseline_bot")
    output = scratch / "echo-output.log"
    with output.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "aiogram_echo.py"), cwd=scratch,
            env={
                "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT),
                "BOT_TOKEN": echo_bot.token, "TELEGRAM_API_URL": telegram.url,
                "MODE": "polling",
            },
            stdout=sink, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    try:
        try:
            await wait_until(lambda: polling(telegram, echo_bot), timeout=60)
            await echo_user(
                telegram, echo_bot, start_at=0.0, think=lambda: 0.0,
                messages=ECHO_WARMUP_MESSAGES,
            )  # fmt: skip
        except AssertionError as error:
            log = output.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the echo bot did not answer: {error}\n{log}") from error
        answered = len(telegram.calls("sendMessage", bot=echo_bot))
        cpu = cpu_seconds(process.pid)
        rng = random.Random(seed)
        results = await asyncio.gather(
            *(
                echo_user(
                    telegram,
                    echo_bot,
                    start_at=index / spawn_rate if spawn_rate else 0.0,
                    think=lambda: rng.uniform(*think),
                )
                for index in range(users)
            ),
            return_exceptions=True,
        )
        cpu = cpu_seconds(process.pid) - cpu
        answered = len(telegram.calls("sendMessage", bot=echo_bot)) - answered
    finally:
        await interrupt(process)
    errors = sum(isinstance(result, BaseException) for result in results)
    return cpu * 1000 / max(1, answered), errors


async def main(
    users: int, think: tuple[float, float], spawn_rate: float, seed: int,
    profile: Path | None = None, baseline: bool = True,
) -> dict[str, Any]:  # fmt: skip
    latencies: list[float] = []
    errors = 0
    baseline_ms: float | None = None
    baseline_errors: int | None = None
    manager_cpu = manager_loop_cpu = generator_cpu = elapsed = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            FakeTelegram() as telegram,
            FakeOpenAI() as llm,
            FakeKubernetes(auto_ready=True) as kube,
        ):
            kube.put_object("namespaces", {"metadata": {"name": "agents"}})
            kubeconfig = kube.write_kubeconfig(Path(scratch) / "kubeconfig")
            manager_bot = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
            profiling = profiling_env(Path(scratch), profile)
            process = await start_manager_process(
                telegram, manager_bot, Path(scratch),
                BACKEND="kubernetes", PUBLIC_URL=PUBLIC_URL, KUBECONFIG=str(kubeconfig),
                OPENAI_API_KEY="sk-benchbenchbenchbench00", OPENAI_BASE_URL=llm.url,
                MAX_AGENTS_PER_USER="3", METRICS_PORT="0", HEALTH_INTERVAL="3600",
                ENCRYPTION_KEYS=generate_key(), **profiling,
            )  # fmt: skip
            try:
                await wait_until(lambda: polling(telegram, manager_bot), timeout=60)
                # Its own user and agent bot, not timed: the quota is per user anyway.
                await one_user(telegram, manager_bot, "Warmup", [], start_at=0.0, think=lambda: 0.0)
                manager_cpu, generator_cpu = cpu_seconds(process.pid), own_cpu_seconds()
                manager_loop_cpu = main_thread_cpu_seconds(process.pid)
                if profile is not None:
                    process.send_signal(signal.SIGUSR1)
                started = time.perf_counter()
                rng = random.Random(seed)
                results = await asyncio.gather(
                    *(
                        one_user(
                            telegram,
                            manager_bot,
                            f"Bench{index:04d}",
                            latencies,
                            start_at=index / spawn_rate if spawn_rate else 0.0,
                            think=lambda: rng.uniform(*think),
                        )
                        for index in range(users)
                    ),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
                manager_cpu = cpu_seconds(process.pid) - manager_cpu
                manager_loop_cpu = main_thread_cpu_seconds(process.pid) - manager_loop_cpu
                generator_cpu = own_cpu_seconds() - generator_cpu
                errors = sum(isinstance(result, BaseException) for result in results)
                if profile is not None:
                    await asyncio.to_thread(profile.unlink, missing_ok=True)
                    process.send_signal(signal.SIGUSR2)

                    async def dumped() -> bool:
                        return await asyncio.to_thread(profile.exists)

                    await wait_until(dumped, timeout=30)
            finally:
                await stop_process(process)
            if baseline:
                baseline_ms, baseline_errors = await measure_baseline(
                    telegram, Path(scratch), users=users, think=think, spawn_rate=spawn_rate,
                    seed=seed,
                )  # fmt: skip
    latencies.sort()
    manager_ms = manager_cpu * 1000 / max(1, len(latencies))
    return {
        "users": users,
        "think_s": list(think),
        "spawn_per_s": spawn_rate,
        "updates_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1)
        if latencies
        else None,
        "errors": errors,
        "manager_cpu_ms_per_update": round(manager_ms, 1),
        "manager_loop_cpu_ms_per_update": round(
            manager_loop_cpu * 1000 / max(1, len(latencies)), 1
        ),
        "generator_cpu_ms_per_update": round(generator_cpu * 1000 / max(1, len(latencies)), 1),
        "baseline_aiogram_cpu_ms_per_update": baseline_ms and round(baseline_ms, 2),
        "baseline_errors": baseline_errors,
        "manager_vs_baseline": round(manager_ms / baseline_ms, 1) if baseline_ms else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--think", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"))
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile", type=Path, metavar="FILE",
        help="cProfile the manager's event loop over the run into FILE (pstats); the "
        "profiler's own cost inflates the CPU figures of that run",
    )  # fmt: skip
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false",
        help="skip the same-run baseline (a bare aiogram echo bot under the same load)",
    )  # fmt: skip
    arguments = parser.parse_args()
    print(
        json.dumps(
            asyncio.run(
                main(
                    arguments.users,
                    tuple(arguments.think),
                    arguments.spawn_rate,
                    arguments.seed,
                    arguments.profile,
                    arguments.baseline,
                )
            )
        )
    )
