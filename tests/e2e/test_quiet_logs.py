"""What the manager process writes to its log: LOG_LEVEL, and sweeps that change nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import answer_start_once, polling, start_manager_process, stop_process
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import until, wait_until

QUIET = {"DEBUG"}  # below INFO: not written at the default LOG_LEVEL


def entries(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_sweeps_that_change_nothing_leave_no_line_at_info(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    process = await start_manager_process(
        telegram, manager, tmp_path,
        HEALTH_INTERVAL="1", LOG_LEVEL="debug", LOG_FORMAT="json", METRICS_PORT="0",
    )  # fmt: skip
    log = tmp_path / "manager-output.log"

    def sweeps() -> list[dict[str, Any]]:
        return [e for e in entries(log.read_text()) if e["message"].startswith("health sweep:")]

    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        await until(lambda: len(sweeps()) >= 3, timeout=60)
    finally:
        output = await stop_process(process)
    logged = entries(output)
    polled = next(i for i, e in enumerate(logged) if e["message"] == "Start polling")
    # Each sweep wrote its one summary line, below INFO: nothing changed.
    assert {e["level"] for e in sweeps()} == QUIET
    assert all("0 changes, 0 messages, 0 repaired, 0 stopped" in e["message"] for e in sweeps())
    # APScheduler says nothing of its runs ("Running job ...", "executed successfully"),
    # even at DEBUG; so, at INFO, the sweeps left no line at all.
    assert not [e for e in logged if e["logger"].startswith("apscheduler")]
    after_polling = [e for e in logged[polled + 1 :] if e["level"] not in QUIET]
    assert not [e for e in after_polling if "sweep" in e["message"] or "job" in e["message"]]


async def test_log_level_warning_keeps_only_warnings_and_errors(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    output = await answer_start_once(
        telegram, tmp_path, LOG_LEVEL="WARNING", LOG_FORMAT="json", METRICS_PORT="0"
    )
    logged = entries(output)
    assert {e["level"] for e in logged} <= {"WARNING", "ERROR"}
    # The one warning of a first start: the generated key (ENCRYPTION_KEYS unset).
    assert any("fernet.key" in e["message"] for e in logged)
    assert not [e for e in logged if e["message"] == "Start polling"]  # INFO, so not written
