"""A manager killed in the middle of a deploy finishes it at its next start, and says so.

The real `python -m manager_bot` (local backend), SIGKILLed while a deploy is held at
one of its steps by a slow Telegram call; a second process on the same data directory
finds the operation still running, completes the deploy and edits the same progress
message. No step is left half-done, nothing is sent twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.conftest import fill_wizard, polling, start_manager_process, stop_process
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until


def stop_agents(data: Path) -> None:
    """Local agents outlive their manager (on purpose): end the ones this test made."""
    for state in data.glob("agents/*/state.json"):
        pid = json.loads(state.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def deploy_audit(data: Path) -> list[str]:
    """The outcomes of the deploys in the audit log, oldest first."""
    with contextlib.closing(sqlite3.connect(data / "hatchbot.db")) as database:
        query = "SELECT outcome FROM audit_log WHERE action = 'deploy' ORDER BY id"
        return [outcome for (outcome,) in database.execute(query)]


def manager_env(openai_server: FakeOpenAI) -> dict[str, str]:
    """The platform key and free ports: the same for every manager a test starts."""
    return {
        "OPENAI_API_KEY": "sk-platformkeyplatformkey00", "OPENAI_BASE_URL": openai_server.url,
        "METRICS_PORT": "0", "GATEWAY_PORT": str(free_port()),
    }  # fmt: skip


# Where the deploy is held: (Bot API method, whose bot, calls let through first) slowed
# down long enough to kill.
HOLDS = {
    "after the agent is stored": ("editMessageText", "manager", 0),  # the first progress edit
    "at the webhook step": ("deleteWebhook", "agent", 0),  # local agents poll: it is cleared
    "while waiting for readiness": ("getMe", "agent", 0),  # the runtime's first getMe
    # The agent runs and the progress shows every step done: the "is live" message (after
    # the progress message itself) is what is held, and it is lost with the process.
    "before saying it is live": ("sendMessage", "manager", 1),
}


@pytest.mark.parametrize("hold", list(HOLDS))
async def test_a_deploy_killed_midway_is_finished_at_the_next_start(
    telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path, hold: str
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    env = manager_env(openai_server)
    process = await start_manager_process(telegram, manager, tmp_path, **env)
    user = telegram.user(manager)
    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        await fill_wizard(user, telegram, "phoenix_bot")
        agent_bot = telegram.bot("phoenix_bot")

        method, whose, after = HOLDS[hold]
        held: FakeBot = manager if whose == "manager" else agent_bot
        if method == "getMe":  # the manager's own check first, then the runtime's: both
            telegram.inject_fault(method, status=None, delay=6.0, bot=held, times=3)
        elif method == "sendMessage":  # never delivered: the request died with the process
            telegram.inject_fault(method, status=500, delay=15.0, bot=held, after=after)
        else:
            telegram.inject_fault(method, status=None, delay=15.0, bot=held)
        calls_before = len(telegram.calls(method, bot=held))
        await user.press("Deploy")

        async def is_held() -> bool:
            # getMe: held once the runtime asks who it is (the manager asked first).
            wanted = calls_before + (2 if method == "getMe" else 1) + after
            return len(telegram.calls(method, bot=held)) >= wanted

        await wait_until(is_held, timeout=30)
        process.send_signal(signal.SIGKILL)  # no goodbye: a crash mid-step
        await process.wait()

        process = await start_manager_process(telegram, manager, tmp_path, **env)
        await user.wait_for(text_contains="@phoenix_bot is live", timeout=90)
        texts = [m["text"] for m in user.messages()]
        assert not [t for t in texts if t.startswith("Deploying")]  # none left frozen
        assert len([t for t in texts if "is live" in t]) == 1  # told once
        assert deploy_audit(tmp_path / "data") == ["started", "ok"]  # recorded once
        friend = telegram.user(agent_bot)
        await friend.send("are you there?")
        await friend.wait_for(text_contains="echo: are you there?", timeout=30)
    finally:
        await stop_process(process)
        stop_agents(tmp_path / "data")


async def test_a_restart_killed_before_it_said_the_deploy_was_finished_says_it_at_the_next(
    telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    """Recovery tells first and closes the operation after: a second manager killed
    while telling (its edit lost with it) leaves the operation open for a third."""
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    env = manager_env(openai_server)
    process = await start_manager_process(telegram, manager, tmp_path, **env)
    user = telegram.user(manager)

    async def killed_once_called(method: str, count: int) -> None:
        await wait_until(lambda: _called(telegram, manager, method, count), timeout=60)
        process.send_signal(signal.SIGKILL)
        await process.wait()

    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        await fill_wizard(user, telegram, "phoenix_bot")
        # The first manager dies saying "is live" (after the progress message).
        sends = len(telegram.calls("sendMessage", bot=manager))
        telegram.inject_fault("sendMessage", status=500, delay=15.0, bot=manager, after=1)
        await user.press("Deploy")
        await killed_once_called("sendMessage", sends + 2)

        # The second finishes the deploy and dies editing the progress message to say so.
        edits = len(telegram.calls("editMessageText", bot=manager))
        telegram.inject_fault("editMessageText", status=500, delay=15.0, bot=manager)
        process = await start_manager_process(telegram, manager, tmp_path, **env)
        await killed_once_called("editMessageText", edits + 1)

        process = await start_manager_process(telegram, manager, tmp_path, **env)
        await user.wait_for(text_contains="@phoenix_bot is live", timeout=90)
        texts = [m["text"] for m in user.messages()]
        assert len([t for t in texts if "is live" in t]) == 1
        assert not [t for t in texts if t.startswith("Deploying")]
        assert deploy_audit(tmp_path / "data") == ["started", "ok"]
    finally:
        await stop_process(process)
        stop_agents(tmp_path / "data")


async def _called(telegram: FakeTelegram, bot: FakeBot, method: str, count: int) -> bool:
    return len(telegram.calls(method, bot=bot)) >= count
