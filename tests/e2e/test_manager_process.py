"""`python -m manager_bot` on the embedded defaults, as a new user runs it (README step 1)."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path

import aiohttp

from tests.e2e.conftest import polling, start_manager_process, stop_process
from tests.fakes.loopback import free_port
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until


async def test_manager_starts_on_embedded_defaults_and_greets(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    process = await start_manager_process(
        telegram, manager, tmp_path, METRICS_PORT=str(free_port()), ADMIN_IDS="900001"
    )
    try:
        user = telegram.user(manager)
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        await user.send("/start")
        greeting = await user.wait_for(text_contains="Hatchbot", timeout=15)
        assert "/deploy" in greeting["text"]
        scopes = {
            ("admin" if "900001" in key else "default"): {c["command"] for c in commands}
            for key, commands in manager.commands.items()
        }
        assert {"deploy", "agents", "status", "logs", "cancel"} <= scopes["default"]
        assert "broadcast" not in scopes["default"]  # admin commands only in admins' scope
        assert {"deploy", "broadcast", "stats", "users", "ban", "audit"} <= scopes["admin"]
        database = tmp_path / "data" / "hatchbot.db"
        key_file = tmp_path / "data" / "fernet.key"
        assert database.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    finally:
        output = await stop_process(process)
    assert "fernet.key" in output  # the generated-key warning was given
    assert manager.token not in output


async def test_manager_serves_probes_and_metrics_and_logs_json(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    port = free_port()
    process = await start_manager_process(
        telegram, manager, tmp_path, METRICS_PORT=str(port), LOG_FORMAT="json"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"{base}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(ready, timeout=60)
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            user = telegram.user(manager)
            await user.send("/start")
            await user.wait_for(text_contains="Hatchbot", timeout=15)
            # A user who blocked the bot: the reply fails with 403, counted by method and code.
            blocked = telegram.user(manager, first_name="Bob")
            telegram.block(manager, blocked.id)
            await blocked.send("/start")

            async def scraped() -> str:
                async with http.get(f"{base}/metrics") as response:
                    assert response.headers["Content-Type"].startswith("text/plain")
                    return await response.text()

            async def counted() -> bool:
                return 'method="sendMessage"' in await scraped()

            await wait_until(counted, timeout=15)
            metrics = await scraped()
    finally:
        output = await stop_process(process)
    assert 'hatchbot_manager_updates_total{outcome="ok",type="message"} 1.0' in metrics
    assert 'hatchbot_manager_updates_total{outcome="error",type="message"} 1.0' in metrics
    assert 'hatchbot_manager_telegram_errors_total{code="403",method="sendMessage"} ' in metrics
    assert "hatchbot_manager_handler_seconds_bucket" in metrics
    assert "hatchbot_manager_deploys_total" in metrics
    lines = [line for line in output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "logger", "request_id", "message"} <= set(entries[0])
    failure = next(e for e in entries if "unhandled error" in e["message"])
    assert failure["level"] == "ERROR" and failure["request_id"] in failure["message"]
    assert "Forbidden" in failure["exception"]
    assert manager.token not in output


async def test_a_taken_gateway_port_stops_the_manager_with_one_clear_line(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await start_manager_process(
            telegram, manager, tmp_path, METRICS_PORT="0", GATEWAY_PORT=str(port)
        )
        assert await asyncio.wait_for(process.wait(), timeout=60) == 1
    output = await stop_process(process)
    assert f"the LLM gateway cannot listen on 127.0.0.1:{port}" in output
    assert "set GATEWAY_PORT" in output and "Traceback" not in output
