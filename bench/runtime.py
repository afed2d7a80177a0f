"""Footprint of one agent: the runtime against a minimal aiogram echo bot, same run.

Prints one JSON object:
{"runtime": {"idle_rss_mb", "ready_s", "overhead_p50_ms", "overhead_p99_ms",
             "first_update_ms"},
 "runtime_two_mcp_servers": {...same keys, "tools_ready_s"},
 "baseline_aiogram": {...same keys}}

- idle_rss_mb: VmRSS of the process one second after it is ready (webhook mode).
- ready_s: from exec to the first 200 of its readiness endpoint.
- first_update_ms: the same for the very first update after start (cold).
- runtime_two_mcp_servers: the runtime with MCP_SERVERS=docs,tickets (the fake MCP
  server, four tools each; the model is offered all eight and calls none).
  tools_ready_s: from exec until /metrics shows both servers' tools listed; its
  idle RSS is taken one second after that, with `mcp` loaded.
- overhead: per update after a warm-up of 20, from the webhook POST to Telegram receiving the answer,
  minus the time the (instant) fake LLM spent on it; updates are posted at a
  steady rate (default 200/s) over many chats. The fake Telegram and OpenAI
  servers run in a process of their own, so serving them does not count as the
  bot's time (CLOCK_MONOTONIC is shared by all processes of the machine).
Usage: python bench/runtime.py [--updates 600] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.loopback import free_port  # noqa: E402
from tests.fakes.mcp_server import FakeMcpServer  # noqa: E402
from tests.fakes.openai_api import FakeOpenAI  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram  # noqa: E402

SECRET = "bench_secret"
# The first updates of a fresh process pay one-off costs (lazy imports and model set-up
# in the SDKs, first connections): they are sent but not counted in p50/p99, and the
# very first one is reported on its own as first_update_ms.
WARM_UP = 20
CHATS = 50
MCP_SERVERS = ("docs", "tickets")


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


async def wait_tools(url: str, servers: int, deadline: float) -> None:
    """Until the runtime's metrics say every MCP server's tools are listed."""
    up = f"hatchbot_agent_mcp_servers_up {float(servers)}"
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(url) as response:
                if up in await response.text():
                    return
            await asyncio.sleep(0.01)
    raise RuntimeError("the MCP servers' tools were never listed")


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


class Fakes:
    """The fake Telegram and OpenAI servers in a child process, driven through a pipe."""

    def __init__(self) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve_fakes, args=(child,), daemon=True
        )
        self._process.start()
        self.info: dict[str, str] = self._conn.recv()

    async def ask(self, command: str, *args: Any) -> Any:
        self._conn.send((command, args))
        return await asyncio.to_thread(self._conn.recv)

    def stop(self) -> None:
        self._conn.send(("stop", ()))
        self._process.join(timeout=10)


def _serve_fakes(conn: Any) -> None:
    asyncio.run(_fakes_main(conn))


async def _fakes_main(conn: Any) -> None:
    async with FakeTelegram() as telegram, FakeOpenAI() as llm, FakeMcpServer() as mcp:
        names = ("agent", "tools", "echo")
        bots = {name: telegram.add_bot(username=f"bench_{name}_bot") for name in names}
        for server in MCP_SERVERS:
            mcp.named(server)
        conn.send(
            {"telegram": telegram.url, "llm": llm.url, "mcp": mcp.url}
            | {f"{name}_token": bot.token for name, bot in bots.items()}
        )
        while True:
            command, args = await asyncio.to_thread(conn.recv)
            if command == "stop":
                return
            bot = bots[args[0]]
            if command == "answered":
                conn.send(len([m for m in bot.sent if str(m.get("text", "")).startswith("echo: ")]))
            elif command == "received":
                conn.send(
                    {
                        call.params.get("text"): call.at
                        for call in telegram.calls("sendMessage")
                        if call.bot is bot and call.status == 200
                    }
                )
            elif command == "llm_seconds":
                conn.send(_llm_time_by_reply(llm))


async def measure(
    *, command: list[str], env: dict[str, str], fakes: Fakes, bot: str, ready_path: str,
    updates: int, rate: float, llm_time: bool, mcp_servers: int = 0,
) -> dict[str, float]:  # fmt: skip
    port = env["PORT"]
    figures: dict[str, float] = {}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}{ready_path}", started + 60)
        ready_s = time.monotonic() - started
        if mcp_servers:
            await wait_tools(f"http://127.0.0.1:{port}/metrics", mcp_servers, started + 60)
            figures["tools_ready_s"] = round(time.monotonic() - started, 3)
        await asyncio.sleep(1.0)
        idle = rss_mb(process.pid)
        sent_at: dict[str, float] = {}
        url = f"http://127.0.0.1:{port}/webhook/bench"
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:

            async def post(index: int) -> None:
                body = json.dumps(update(index, 500_000))
                sent_at[f"echo: u{index}"] = time.monotonic()
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()

            tasks = []
            for index in range(WARM_UP + updates):
                tasks.append(asyncio.create_task(post(index)))
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await fakes.ask("answered", bot) >= WARM_UP + updates:
                break
            await asyncio.sleep(0.1)
        received = await fakes.ask("received", bot)
        llm_seconds = await fakes.ask("llm_seconds", bot) if llm_time else {}

        def overhead(index: int) -> float | None:
            text = f"echo: u{index}"
            if text not in received:
                return None
            return (received[text] - sent_at[text] - llm_seconds.get(text, 0.0)) * 1000

        first = overhead(0)
        overheads = [o for o in map(overhead, range(WARM_UP, WARM_UP + updates)) if o is not None]
        if first is None or len(overheads) < updates:
            raise RuntimeError(f"only {len(overheads)} of {updates} updates were answered")
        overheads.sort()
        return {
            "idle_rss_mb": round(idle, 1),
            "ready_s": round(ready_s, 3),
            "overhead_p50_ms": round(statistics.median(overheads), 2),
            "overhead_p99_ms": round(overheads[int(len(overheads) * 0.99) - 1], 2),
            "first_update_ms": round(first, 2),
        } | figures
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
    fakes = Fakes()
    try:
        info = fakes.info
        runtime_env = {
            **base_env,
            "BOT_TOKEN": info["agent_token"],
            "AGENT_ID": "bench",
            "LLM_MODEL": "gpt-4o-mini",
            "LLM_BASE_URL": info["llm"],
            "LLM_API_KEY": "sk-benchbenchbenchbenchbench",
            "WEBHOOK_SECRET": SECRET,
            "TELEGRAM_API_URL": info["telegram"],
            "PORT": str(free_port()),
        }
        runtime = await measure(
            command=[sys.executable, "-m", "runtime"], env=runtime_env, fakes=fakes, bot="agent",
            ready_path="/readyz", updates=updates, rate=rate, llm_time=True,
        )  # fmt: skip
        tools_env = runtime_env | {
            "BOT_TOKEN": info["tools_token"],
            "PORT": str(free_port()),
            "MCP_SERVERS": ",".join(MCP_SERVERS),
            "MCP_BASE_URL": info["mcp"],
        }
        with_tools = await measure(
            command=[sys.executable, "-m", "runtime"], env=tools_env, fakes=fakes, bot="tools",
            ready_path="/readyz", updates=updates, rate=rate, llm_time=True,
            mcp_servers=len(MCP_SERVERS),
        )  # fmt: skip
        echo_env = {
            **base_env,
            "BOT_TOKEN": info["echo_token"],
            "TELEGRAM_API_URL": info["telegram"],
            "PORT": str(free_port()),
            "WEBHOOK_SECRET": SECRET,
        }
        baseline = await measure(
            command=[sys.executable, str(ROOT / "bench" / "aiogram_echo.py")], env=echo_env,
            fakes=fakes, bot="echo", ready_path="/healthz", updates=updates, rate=rate,
            llm_time=False,
        )  # fmt: skip
    finally:
        fakes.stop()
    return {
        "runtime": runtime,
        "runtime_two_mcp_servers": with_tools,
        "baseline_aiogram": baseline,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--rate", type=float, default=200.0)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.updates, arguments.rate))))
