"""`python -m manager_bot` on the embedded defaults, as a new user runs it (README step 1)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


async def test_manager_starts_on_embedded_defaults_and_greets(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "manager_bot",
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "MANAGER_BOT_TOKEN": manager.token,
            "TELEGRAM_API_URL": telegram.url,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        user = telegram.user(manager)

        async def polling() -> bool:
            return bool(telegram.calls("getUpdates", bot=manager))

        await wait_until(polling, timeout=60)
        await user.send("/start")
        greeting = await user.wait_for(text_contains="Hatchbot", timeout=15)
        assert "/deploy" in greeting["text"]
        registered = [c["command"] for c in next(iter(manager.commands.values()))]
        assert {"deploy", "agents", "status", "logs", "cancel"} <= set(registered)
        database = tmp_path / "data" / "hatchbot.db"
        key_file = tmp_path / "data" / "fernet.key"
        assert database.exists()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()
    output = (await process.stdout.read()).decode() if process.stdout else ""
    assert "fernet.key" in output  # the generated-key warning was given
    assert manager.token not in output
