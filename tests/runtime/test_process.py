"""The runtime as the real process a pod or the local backend runs."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from pathlib import Path

from runtime.redaction import RedactingFilter, install_redaction
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until
from tests.runtime.conftest import (
    LLM_KEY,
    agent_env,
    reaped,
    set_webhook,
    terminate,
    wait_ready,
)


async def start_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runtime",
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_sigterm_finishes_the_reply_in_flight(
    telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    openai_server.latency = 2.0
    bot = telegram.add_bot(username="agent_bot")
    env = agent_env(telegram, openai_server, bot)
    async with reaped(await start_process(env)) as process:
        await wait_ready(env["PORT"])
        await set_webhook(telegram, bot, f"http://127.0.0.1:{env['PORT']}/webhook/a1b2c3")
        user = telegram.user(bot)
        await user.send("still there?")

        async def llm_busy() -> bool:
            return openai_server.in_flight > 0

        await wait_until(llm_busy)
        stopping = asyncio.create_task(terminate(process))
        await user.wait_for(text_contains="echo: still there?", timeout=10)
        assert await stopping == 0
        output = (await process.stdout.read()).decode() if process.stdout else ""
        assert bot.token not in output and LLM_KEY not in output


async def test_polling_mode_answers_without_a_webhook(
    telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    bot = telegram.add_bot(username="local_bot")
    env = agent_env(telegram, openai_server, bot, MODE="polling")
    del env["WEBHOOK_SECRET"]
    async with reaped(await start_process(env)) as process:
        await wait_ready(env["PORT"])
        user = telegram.user(bot)
        await user.send("over polling")
        await user.wait_for(text_contains="echo: over polling", timeout=15)
        assert await terminate(process) == 0


async def test_a_log_file_that_cannot_be_written_is_one_line_and_exit_2(
    telegram: FakeTelegram, openai_server: FakeOpenAI, tmp_path: Path
) -> None:
    bot = telegram.add_bot(username="agent_bot")
    env = agent_env(telegram, openai_server, bot, LOG_FILE=str(tmp_path / "absent" / "x.log"))
    async with reaped(await start_process(env)) as process:
        assert await asyncio.wait_for(process.wait(), 30) == 2
        output = (await process.stdout.read()).decode() if process.stdout else ""
    assert output.strip() == (
        "python -m runtime: LOG_FILE cannot be written (No such file or directory)"
    )


def test_redaction_covers_every_logger_and_exceptions() -> None:
    token = "123456789:AAHfakefakefakefakefakefakefakefake12"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(["my-webhook-secret-value"]))
    logger = logging.getLogger("aiohttp.client.some.child")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling https://api.telegram.org/bot%s/getMe", token)
        logger.warning("secret header was my-webhook-secret-value")
        logger.warning("key %s", "sk-proj-abcdefghijklmnopqrstuvwxyz123456")
        try:
            raise RuntimeError(f"boom with {token}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert token not in output
    assert "my-webhook-secret-value" not in output
    assert "sk-proj-abcdefghijklmnopqrstuvwxyz" not in output
    assert output.count("[redacted]") >= 4


def test_install_redaction_filters_the_root_handlers() -> None:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        install_redaction(["super-secret-llm-key"])
        logging.getLogger("openai._base_client").error("sending key super-secret-llm-key")
    finally:
        root.removeHandler(handler)
    assert "super-secret-llm-key" not in stream.getvalue()
    assert "[redacted]" in stream.getvalue()


def test_the_runtime_does_not_import_aiogram() -> None:
    import subprocess

    probe = "import sys, runtime.app, runtime.__main__; print('aiogram' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr
