"""Footprint of one agent: the runtime against a minimal aiogram echo bot, same run.

Prints one JSON object:
{"runtime": {"idle_rss_mb", "ready_s", "overhead_p50_ms", "overhead_p99_ms"},
 "baseline_aiogram": {...same keys}}

- idle_rss_mb: VmRSS of the process one second after it is ready (webhook mode).
- ready_s: from exec to the first 200 of its readiness endpoint.
- overhead: per update, from the webhook POST to Telegram receiving the answer,
  minus the time the (instant) fake LLM spent on it; updates are posted at a
  steady rate (default 200/s) over many chats.
Usage: python bench/runtime.py [--updates 600] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

SECRET = "bench_secret"
CHATS = 50


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_ready(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.01)
    raise RuntimeError(f"{url} never became ready")


def update(index: int, base_id: int) -> dict[str, Any]:
    chat_id = base_id + index % CHATS
    sender = {"id": chat_id, "is_bot": False, "first_name": "Load"}
    message = {
        "message_id": index + 1,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "Load"},
        "from": sender,
        "text": f"u{index}",
    }
    return {"update_id": index + 1, "message": message}


async def measure(
    *, command: list[str], env: dict[str, str], telegram: FakeTelegram, bot_token: str,
    ready_path: str, updates: int, rate: float, llm: FakeOpenAI | None = None,
) -> dict[str, float]:  # fmt: skip
    port = env["PORT"]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}{ready_path}", started + 60)
        ready_s = time.monotonic() - started
        await asyncio.sleep(1.0)
        idle = rss_mb(process.pid)
        bot = next(b for b in telegram._bots.values() if b.token == bot_token)
        sent_at: dict[str, float] = {}
        url = f"http://127.0.0.1:{port}/webhook/bench"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
        base_id = 500_000 + len(bot.sent)
        async with aiohttp.ClientSession() as http:

            async def post(index: int) -> None:
                body = json.dumps(update(index, base_id))
                sent_at[f"echo: u{index}"] = time.monotonic()
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()

            tasks = []
            for index in range(updates):
                tasks.append(asyncio.create_task(post(index)))
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                answered = {m.get("text") for m in bot.sent}
                if all(key in answered for key in sent_at):
                    break
                await asyncio.sleep(0.05)
        received = {
            call.params.get("text"): call.at
            for call in telegram.calls("sendMessage")
            if call.bot is bot and call.status == 200
        }
        llm_seconds = _llm_time_by_reply(llm) if llm is not None else {}
        overheads = [
            (received[text] - sent - llm_seconds.get(text, 0.0)) * 1000
            for text, sent in sent_at.items()
            if text in received
        ]
        if len(overheads) < updates:
            raise RuntimeError(f"only {len(overheads)} of {updates} updates were answered")
        overheads.sort()
        return {
            "idle_rss_mb": round(idle, 1),
            "ready_s": round(ready_s, 3),
            "overhead_p50_ms": round(statistics.median(overheads), 2),
            "overhead_p99_ms": round(overheads[int(len(overheads) * 0.99) - 1], 2),
        }
    finally:
        process.terminate()
        await process.wait()


def _llm_time_by_reply(llm: FakeOpenAI) -> dict[str, float]:
    """Server-side LLM time per answer, keyed by the echo reply it produced."""
    spent = {}
    for request in llm.requests:
        if request.finished_at is not None:
            last = request.body["messages"][-1]["content"]
            spent[f"echo: {last}"] = request.finished_at - request.at
    return spent


async def main(updates: int, rate: float) -> dict[str, Any]:
    base_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    async with FakeTelegram() as telegram, FakeOpenAI() as llm:
        agent = telegram.add_bot(username="bench_agent_bot")
        echo = telegram.add_bot(username="bench_echo_bot")
        runtime_env = {
            **base_env,
            "BOT_TOKEN": agent.token,
            "AGENT_ID": "bench",
            "LLM_MODEL": "gpt-4o-mini",
            "LLM_BASE_URL": llm.url,
            "LLM_API_KEY": "sk-benchbenchbenchbenchbench",
            "WEBHOOK_SECRET": SECRET,
            "TELEGRAM_API_URL": telegram.url,
            "PORT": str(free_port()),
        }
        runtime = await measure(
            command=[sys.executable, "-m", "runtime"], env=runtime_env, telegram=telegram,
            bot_token=agent.token, ready_path="/readyz", updates=updates, rate=rate, llm=llm,
        )  # fmt: skip
        echo_env = {
            **base_env,
            "BOT_TOKEN": echo.token,
            "TELEGRAM_API_URL": telegram.url,
            "PORT": str(free_port()),
            "WEBHOOK_SECRET": SECRET,
        }
        baseline = await measure(
            command=[sys.executable, str(ROOT / "bench" / "aiogram_echo.py")], env=echo_env,
            telegram=telegram, bot_token=echo.token, ready_path="/healthz", updates=updates,
            rate=rate,
        )  # fmt: skip
    return {"runtime": runtime, "baseline_aiogram": baseline}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--rate", type=float, default=200.0)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.updates, arguments.rate))))
