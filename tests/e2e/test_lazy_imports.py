"""A manager on one machine imports only what its configuration uses (cold start)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import answer_start_once
from tests.fakes.telegram_api import FakeTelegram

# "import time: self [us] | cumulative | imported package", one line per module imported.
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", re.MULTILINE)


async def test_a_local_manager_serves_without_kubernetes_redis_or_openai(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    # PYTHONPROFILEIMPORTTIME: the interpreter reports every module it imports on stderr.
    output = await answer_start_once(
        telegram, tmp_path, PYTHONPROFILEIMPORTTIME="1", METRICS_PORT="0"
    )
    packages = {module.split(".")[0] for module in IMPORTED.findall(output)}
    assert {"aiogram", "manager_bot", "sqlalchemy"} <= packages  # the report is there
    # BACKEND=local, no REDIS_URL, no key checked yet: none of their clients was needed.
    assert not packages & {"kubernetes", "urllib3", "redis", "openai"}
