"""The manager process runs on uvloop unless EVENT_LOOP=asyncio, and serves users on both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import polling, start_manager_process, stop_process
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_manager_runs_and_answers_on_the_event_loop_asked_for(
    telegram: FakeTelegram, tmp_path: Path, setting: str | None, expected: str
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    env = {"METRICS_PORT": "0"} | ({"EVENT_LOOP": setting} if setting else {})
    process = await start_manager_process(telegram, manager, tmp_path, **env)
    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        user = telegram.user(manager)
        await user.send("/start")
        await user.wait_for(text_contains="Hatchbot", timeout=15)
    finally:
        output = await stop_process(process)
    assert f"manager starting on the {expected} event loop" in output
