"""A running agent for runtime tests: the real Runtime, the fake Telegram and OpenAI servers."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from runtime.app import Runtime
from runtime.config import RuntimeSettings
from runtime.settings_loading import load_settings
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until

WEBHOOK_SECRET = "test_webhook_secret-123"
LLM_KEY = "sk-testkeyforagent000000000000"


def agent_env(
    telegram: FakeTelegram, openai_server: FakeOpenAI, bot: FakeBot, **overrides: str
) -> dict[str, str]:
    env = {
        "BOT_TOKEN": bot.token,
        "AGENT_ID": "a1b2c3",
        "LLM_MODEL": "gpt-4o-mini",
        "LLM_BASE_URL": openai_server.url,
        "LLM_API_KEY": LLM_KEY,
        "SYSTEM_PROMPT": "You are a test assistant.",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TELEGRAM_API_URL": telegram.url,
        "PORT": str(free_port()),
    }
    env.update(overrides)
    return env


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def wait_ready(port: str, *, timeout: float = 30) -> None:
    """Until the runtime on this port answers /readyz with 200."""

    async def ready() -> bool:
        try:
            return (await http_get(f"http://127.0.0.1:{port}/readyz"))[0] == 200
        except OSError:
            return False

    await wait_until(ready, timeout=timeout)


@asynccontextmanager
async def reaped(process: asyncio.subprocess.Process) -> AsyncIterator[asyncio.subprocess.Process]:
    """The process, killed on the way out if a failing test left it running."""
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def terminate(process: asyncio.subprocess.Process, *, timeout: float = 15) -> int:
    """SIGTERM, as the kubelet or the local backend sends it; the exit code."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout=timeout)


async def set_webhook(
    telegram: FakeTelegram, bot: FakeBot, url: str, secret: str = WEBHOOK_SECRET
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{telegram.url}/bot{bot.token}/setWebhook",
            json={"url": url, "secret_token": secret, "allowed_updates": ["message"]},
        ) as response,
    ):
        assert (await response.json())["ok"]


@dataclass
class RunningAgent:
    runtime: Runtime
    bot: FakeBot
    url: str  # base URL of the runtime's HTTP server

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhook/{self.runtime.settings.agent_id}"


AgentFactory = Callable[..., "asynccontextmanager[RunningAgent]"]


@pytest.fixture
def start_agent(telegram: FakeTelegram, openai_server: FakeOpenAI) -> Callable[..., object]:
    """`async with start_agent(**env_overrides) as agent:` runs an agent in webhook mode."""

    @asynccontextmanager
    async def start(
        *, bot: FakeBot | None = None, wait_ready: bool = True, **overrides: str
    ) -> AsyncIterator[RunningAgent]:
        bot = bot or telegram.add_bot(username="agent_bot", first_name="Helper")
        settings = load_settings(
            RuntimeSettings, agent_env(telegram, openai_server, bot, **overrides)
        )
        runtime = Runtime(settings)
        runner = web.AppRunner(runtime.web_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        await runtime.start()
        agent = RunningAgent(runtime, bot, f"http://127.0.0.1:{settings.port}")
        try:
            if wait_ready:

                async def ready() -> bool:
                    return (await http_get(f"{agent.url}/readyz"))[0] == 200

                await wait_until(ready)
                await set_webhook(telegram, bot, agent.webhook_url)
            yield agent
        finally:
            await runtime.stop()
            await runner.cleanup()

    return start
