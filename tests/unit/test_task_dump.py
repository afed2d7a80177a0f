"""The harness prints what each asyncio task awaits before a test times out
(tests/fakes/task_dump.py): run on a test that hangs, in a pytest of its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

HANGS = """
import asyncio

import pytest


@pytest.mark.timeout(7)
async def test_hangs() -> None:
    async def waits_for_a_reply_that_never_comes() -> None:
        await asyncio.Event().wait()

    await asyncio.create_task(waits_for_a_reply_that_never_comes())
"""


def test_a_hanging_test_shows_which_task_waits_on_what(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_hangs=HANGS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(
        "-p", "tests.fakes.task_dump", "-o", "asyncio_mode=auto", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    # In the failed test's report (pytest captures file descriptor 2 as well).
    dump = "\n".join(result.outlines + result.errlines)
    assert "test_hangs.py::test_hangs: 2 asyncio tasks, near the timeout" in dump
    assert "waits_for_a_reply_that_never_comes" in dump
    assert "await asyncio.Event().wait()" in dump  # the line it waits on
