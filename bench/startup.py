"""Cold start of the manager and of an agent runtime, measured in the same run.

Prints one JSON line:
{"manager_ready_s": ..., "manager_first_reply_s": ..., "manager_cpu_s": ...,
 "runtime_ready_s": ..., "imports": {...}}

- manager_ready_s: from exec of `python -m manager_bot` (local backend, a fresh SQLite
  database, the in-process gateway) to its first getUpdates reaching the fake Telegram
  server: the moment it polls, so users are served.
- manager_first_reply_s: from the same exec to its answer to a /start sent before it
  started: what a waiting user sees, Telegram models built on first use included
  (manager_bot/lazy_aiogram.py).
- manager_cpu_s: the CPU seconds (user + system) the manager had used by then: what
  start-up costs, less sensitive than wall time to what else the machine is running.
- runtime_ready_s: from exec of `python -m runtime` (webhook mode) to its first /readyz 200.
- imports: the ten packages the manager spends most import time on, to polling, from
  `python -X importtime` (cumulative seconds; see `slowest_imports`).
Each figure is the median of --runs starts (default 5); bytecode is compiled first, as the
image does at build, so the first run does not pay for it. With --baseline DIR (another
copy of the code, e.g. `git archive HEAD | tar -x -C DIR`) its starts alternate with this
checkout's and "baseline" holds its two figures: this machine is noisy, compare in one run.
Usage: python bench/startup.py [--runs 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.loopback import free_port  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeBot, FakeTelegram  # noqa: E402

TOP = 10
OWN = {"manager_bot", "runtime"}
# "import time: self [us] | cumulative | imported package", indented by nesting depth.
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def base_env(code: Path = ROOT) -> dict[str, str]:
    # Nothing of the caller's settings leaks in; PYTHONPATH finds the code.
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(code)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def manager_env(telegram: FakeTelegram, bot: FakeBot, code: Path) -> dict[str, str]:
    return base_env(code) | {
        "MANAGER_BOT_TOKEN": bot.token, "TELEGRAM_API_URL": telegram.url,
        "GATEWAY_PORT": str(free_port()), "METRICS_PORT": "0",
    }  # fmt: skip


async def until_polling(
    telegram: FakeTelegram, bot: FakeBot, process: asyncio.subprocess.Process
) -> None:
    while not telegram.calls("getUpdates", bot=bot):
        if process.returncode is not None:
            raise RuntimeError(f"the manager exited with {process.returncode}")
        await asyncio.sleep(0.005)


async def manager_ready(
    telegram: FakeTelegram, directory: Path, code: Path = ROOT
) -> tuple[float, float, float]:
    """Seconds from exec to polling, the CPU seconds the manager used meanwhile, and
    seconds from exec to its answer to a user who wrote /start before it started."""
    bot = telegram.add_bot(username=f"startup_{len(telegram.calls())}_bot")
    user = telegram.user(bot)
    await user.send("/start")
    env = manager_env(telegram, bot, code)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "manager_bot", cwd=directory, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until_polling(telegram, bot, process)
        used = cpu_seconds(process.pid)
        await user.wait_for(timeout=60)
        answered = time.monotonic() - started
        # The fake stamps each request with CLOCK_MONOTONIC as it arrives.
        return telegram.calls("getUpdates", bot=bot)[0].at - started, used, answered
    finally:
        process.terminate()
        await process.wait()


async def runtime_ready(telegram: FakeTelegram, llm: FakeOpenAI, code: Path = ROOT) -> float:
    bot = telegram.add_bot(username=f"startup_runtime_{len(telegram.calls())}_bot")
    port = free_port()
    env = base_env(code) | {
        "BOT_TOKEN": bot.token, "AGENT_ID": "startup", "MODE": "webhook",
        "WEBHOOK_SECRET": "s" * 40, "PORT": str(port), "HOST": "127.0.0.1",
        "TELEGRAM_API_URL": telegram.url, "LLM_BASE_URL": llm.url,
        "LLM_API_KEY": "sk-startup", "LLM_MODEL": "gpt-4o-mini",
    }  # fmt: skip
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtime", cwd=code, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the runtime exited with {process.returncode}")
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as answer:
                        if answer.status == 200:
                            return time.monotonic() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.005)
    finally:
        process.terminate()
        await process.wait()


async def manager_imports(telegram: FakeTelegram, directory: Path) -> dict[str, float]:
    """The slowest imports of one manager start, to polling (its stderr holds -X importtime)."""
    bot = telegram.add_bot(username="startup_imports_bot")
    env = manager_env(telegram, bot, ROOT)
    log = directory / "importtime.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-X", "importtime", "-m", "manager_bot", cwd=directory, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    try:
        await until_polling(telegram, bot, process)
    finally:
        process.terminate()
        await process.wait()
    return slowest_imports(log.read_text(errors="replace"))


def slowest_imports(report: str) -> dict[str, float]:
    """Cumulative seconds of each package, counted where another package first imports it
    (aiogram as manager_bot.app imports it; pydantic as aiogram does), our own left out:
    they hold everything. A package inside another is counted in both."""
    costs: dict[str, float] = {}
    parents: list[tuple[int, str]] = []  # depth, module: the chain above the current line
    # Lines come children first; read backwards, each line's parent was read before it.
    for line in reversed(report.splitlines()):
        match = IMPORT_LINE.match(line)
        if match is None:
            continue
        _, cumulative, indent, module = match.groups()
        depth = len(indent) // 2
        while parents and parents[-1][0] >= depth:
            parents.pop()
        package = module.split(".")[0]
        parent = parents[-1][1].split(".")[0] if parents else None
        parents.append((depth, module))
        if package not in OWN and package != parent:
            costs[package] = costs.get(package, 0.0) + int(cumulative) / 1e6
    slowest = sorted(costs.items(), key=lambda item: item[1], reverse=True)[:TOP]
    return {package: round(seconds, 3) for package, seconds in slowest}


async def main(runs: int, baseline: Path | None) -> dict[str, object]:
    codes = [ROOT] if baseline is None else [ROOT, baseline]
    for code in codes:  # as the image does at build (Dockerfile): no run compiles bytecode
        for package in ("manager_bot", "runtime", "migrations"):
            compileall.compile_dir(code / package, quiet=1)
    manager: dict[Path, list[tuple[float, float, float]]] = {code: [] for code in codes}
    runtime: dict[Path, list[float]] = {code: [] for code in codes}
    async with FakeTelegram() as telegram, FakeOpenAI() as llm:
        for _ in range(runs):
            for code in codes:
                # A fresh directory each time: a new SQLite database, migrated from empty.
                with tempfile.TemporaryDirectory() as directory:
                    manager[code].append(await manager_ready(telegram, Path(directory), code))
                runtime[code].append(await runtime_ready(telegram, llm, code))
        with tempfile.TemporaryDirectory() as directory:
            imports = await manager_imports(telegram, Path(directory))

    def figures(code: Path) -> dict[str, float]:
        return {
            "manager_ready_s": round(statistics.median(run[0] for run in manager[code]), 3),
            "manager_first_reply_s": round(statistics.median(run[2] for run in manager[code]), 3),
            "manager_cpu_s": round(statistics.median(run[1] for run in manager[code]), 3),
            "runtime_ready_s": round(statistics.median(runtime[code]), 3),
        }

    result: dict[str, object] = {**figures(ROOT), "imports": imports}
    if baseline is not None:
        result["baseline"] = figures(baseline)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="starts of each program")
    parser.add_argument("--baseline", type=Path, help="another copy of the code to compare")
    arguments = parser.parse_args()
    baseline = arguments.baseline.resolve() if arguments.baseline else None
    print(json.dumps(asyncio.run(main(arguments.runs, baseline))))
