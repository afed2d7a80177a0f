"""The LLM gateway over real HTTP: who may call, which key goes where, budgets, limits, usage.

Agents are rows made as the deployer makes them; the gateway is the real one, in
front of the fake OpenAI server; clients are plain HTTP and the real openai SDK.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from manager_bot.config import PlatformSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.migrate import upgrade
from manager_bot.db.models import DesiredState
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.process import build_gateway
from manager_bot.services.budgets import Budgets
from runtime.app import Runtime
from runtime.config import RuntimeSettings
from runtime.settings_loading import load_settings
from tests.fakes.loopback import free_port, serve_on_loopback
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import wait_until
from tests.integration.gateway_platform import (
    MESSAGES,
    OWNER,
    PLATFORM_KEY,
    USER_KEY,
    Platform,
)

REPO = Path(__file__).resolve().parents[2]


async def complete(
    platform: Platform, credential: str, *, body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """One non-streamed completion through the gateway: (status, JSON body)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{platform.gateway.url}/chat/completions",
            json=body or {"model": "gpt-4o", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {credential}", **(headers or {})},
        ) as response,
    ):
        return response.status, await response.json()


# -- who may call --------------------------------------------------------------------


async def test_only_a_live_agents_credential_opens_the_gateway(platform: Platform) -> None:
    agent, credential = await platform.agent()
    assert (await complete(platform, credential))[0] == 200
    for wrong in ("", "hbgw_forged", credential + "x"):
        status, body = await complete(platform, wrong)
        assert (status, body["error"]["code"]) == (401, "invalid_gateway_credential")
    for state in (DesiredState.STOPPED, DesiredState.DELETED):
        await platform.update(agent.id, desired_state=state.value)
        status, body = await complete(platform, credential)
        assert (status, body["error"]["code"]) == (403, "agent_disabled")
    await platform.update(agent.id, desired_state=DesiredState.RUNNING.value)
    async with platform.database.session() as session:
        await Repositories(session).users.set_banned(OWNER, True)
    assert (await complete(platform, credential))[0] == 403
    assert len(platform.llm.chat_requests()) == 1  # refused requests never reach a provider


# -- what goes upstream --------------------------------------------------------------


async def test_the_platform_key_goes_upstream_with_the_agents_model_and_a_capped_budget(
    platform: Platform,
) -> None:
    _, credential = await platform.agent()
    status, body = await complete(
        platform, credential,
        body={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 999_999},
        headers={"X-Hatchbot-Chat-User": "77"},
    )  # fmt: skip
    assert status == 200 and body["choices"][0]["message"]["content"] == "echo: hi there"
    (sent,) = platform.llm.requests
    assert sent.body["model"] == "gpt-4o-mini"  # the agent's model, not what it asked for
    assert sent.body["max_tokens"] == platform.settings.gateway_max_tokens
    assert "x-hatchbot-chat-user" not in {name.lower() for name in sent.headers}


async def test_a_stream_passes_through_with_usage_forced_and_counted(platform: Platform) -> None:
    agent, credential = await platform.agent()
    client = openai.AsyncOpenAI(base_url=platform.gateway.url, api_key=credential, max_retries=0)
    stream = await client.chat.completions.create(
        model="anything",
        messages=MESSAGES,
        stream=True,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    await client.close()
    assert "".join(p or "" for p in pieces) == "echo: hi there"
    (sent,) = platform.llm.chat_requests()
    assert sent["stream_options"] == {"include_usage": True}  # the agent did not ask for it
    await platform.gateway.flush()
    # The fake counts words: 4 of prompt ("Be brief." + "hi there"), 3 of answer.
    assert await platform.stored_tokens(agent.id) == 7


async def test_a_users_own_key_goes_upstream_and_a_new_one_is_used_at_once(
    platform: Platform,
) -> None:
    agent, credential = await platform.agent(llm_api_key_encrypted=platform.vault.encrypt(USER_KEY))
    platform.llm.expected_key = USER_KEY
    assert (await complete(platform, credential))[0] == 200
    replaced = "sk-replacedreplacedreplaced0"
    await platform.update(agent.id, llm_api_key_encrypted=platform.vault.encrypt(replaced))
    platform.llm.expected_key = replaced
    assert (await complete(platform, credential))[0] == 200


async def test_a_providers_error_body_never_passes_through(platform: Platform) -> None:
    _, credential = await platform.agent()
    platform.llm.fail_next(401, body={"error": {"message": f"Incorrect key {PLATFORM_KEY[:12]}"}})
    status, body = await complete(platform, credential)
    assert status == 401 and body["error"]["code"] == "provider_401"
    assert PLATFORM_KEY[:12] not in json.dumps(body)


# -- budgets and limits ----------------------------------------------------------------


async def test_an_agent_over_its_daily_budget_is_refused_in_plain_words(
    platform: Platform,
) -> None:
    # Each completion: 4 prompt tokens + 40 answered (the fake counts words); the prompt's
    # upper bound is 37 (its bytes). 0 and 44 leave room; at 88 (past 80%) 88 + 37 > 100.
    platform.llm.reply_with("word " * 40)
    agent, credential = await platform.agent(daily_token_budget=100)
    statuses = [(await complete(platform, credential))[0] for _ in range(2)]
    status, body = await complete(platform, credential)
    assert statuses == [200, 200] and status == 429
    assert body["error"]["code"] == "daily_budget_exhausted"
    assert "reached its daily limit; it resets at 00:00 UTC" in body["error"]["message"]
    await platform.gateway.flush()
    assert await platform.stored_tokens(agent.id) == 88
    async with platform.database.session() as session:
        owed = {n.key.split(":")[0] for n in await Repositories(session).notices.all()}
    assert owed == {"budget-80", "budget-100"}

    budgets = Budgets(database=platform.database, default_budget=1000)
    await budgets.raise_agent(actor_id=1, agent_id=agent.id, tokens=10_000)
    assert (await complete(platform, credential))[0] == 200  # an admin's raise works at once


@pytest.mark.parametrize(
    "gateway_env", [{"GATEWAY_USER_BURST": "2", "GATEWAY_USER_RATE_PER_MINUTE": "1"}]
)
async def test_each_chat_user_has_a_rate_of_their_own(platform: Platform) -> None:
    _, credential = await platform.agent()
    alice, bob = {"X-Hatchbot-Chat-User": "1"}, {"X-Hatchbot-Chat-User": "2"}
    assert [(await complete(platform, credential, headers=alice))[0] for _ in range(3)] == [
        200, 200, 429,
    ]  # fmt: skip
    _, body = await complete(platform, credential, headers=alice)
    assert body["error"]["code"] == "user_rate_limited"
    assert (await complete(platform, credential, headers=bob))[0] == 200


@pytest.mark.parametrize("gateway_env", [{"GATEWAY_AGENT_CONCURRENCY": "2"}])
async def test_an_agent_has_a_cap_on_completions_in_flight(platform: Platform) -> None:
    _, credential = await platform.agent()
    platform.llm.latency = 0.5
    results = await asyncio.gather(*(complete(platform, credential) for _ in range(4)))
    assert sorted(status for status, _ in results) == [200, 200, 429, 429]
    assert {b["error"]["code"] for s, b in results if s == 429} == {"agent_busy"}


# -- usage that survives -------------------------------------------------------------


async def test_usage_survives_a_gateway_restart_and_the_budget_holds_across_it(
    platform: Platform,
) -> None:
    platform.llm.reply_with("word " * 40)  # 44 tokens a completion, prompt bound 37
    agent, credential = await platform.agent(daily_token_budget=200)
    assert (await complete(platform, credential))[0] == 200
    await platform.gateway.stop()  # a clean stop writes what it counted
    assert await platform.stored_tokens(agent.id) == 44
    platform.gateway = build_gateway(
        settings=platform.settings, database=platform.database, vault=platform.vault
    )
    await platform.gateway.start("127.0.0.1", 0)
    statuses = [(await complete(platform, credential))[0] for _ in range(5)]
    # 44 -> 88 -> 132 -> 176, then 176 + 37 > 200. A gateway that forgot the first 44
    # would have admitted a fourth.
    assert statuses == [200, 200, 200, 429, 429]
    await platform.gateway.flush()
    assert await platform.stored_tokens(agent.id) == 176


async def test_a_killed_gateway_process_loses_no_usage_older_than_one_flush(
    platform: Platform, sqlite_url: str, tmp_path: Path
) -> None:
    """`python -m manager_bot gateway` on its own; SIGKILL after more than a flush interval."""
    agent, credential = await platform.agent()
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "manager_bot", "gateway", cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
            "DATABASE_URL": sqlite_url,
            "ENCRYPTION_KEYS": platform.key,
            "OPENAI_API_KEY": PLATFORM_KEY, "OPENAI_BASE_URL": platform.llm.url,
            "GATEWAY_PORT": str(port), "GATEWAY_FLUSH_SECONDS": "0.3",
        },
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=30)
        platform.gateway.url = f"{url}/v1"
        for _ in range(3):
            assert (await complete(platform, credential))[0] == 200
        await asyncio.sleep(0.9)  # three flush intervals
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert await platform.stored_tokens(agent.id) == 21
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- users' own endpoints (SSRF) -------------------------------------------------------


@pytest.fixture
async def redirector() -> AsyncIterator[str]:
    """An endpoint that answers every request with a redirect to a private address."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.1/v1/chat/completions")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner, url = await serve_on_loopback(app)
    yield url
    await runner.cleanup()


async def test_a_users_endpoint_at_a_private_address_is_refused(platform: Platform) -> None:
    port = platform.llm.url.split(":")[-1].split("/")[0]
    for base in (
        platform.llm.url,  # 127.0.0.1
        f"http://localhost:{port}/v1",  # a name that resolves to loopback
        "http://169.254.169.254/latest",  # the cloud metadata service
        "http://10.1.2.3/v1",
        f"http://[::1]:{port}/v1",
        "http://2130706433/v1",  # 127.0.0.1 spelled as one number
    ):
        _, credential = await platform.agent(
            provider="custom",
            llm_base_url=base,
            llm_api_key_encrypted=platform.vault.encrypt(USER_KEY),
        )
        status, body = await complete(platform, credential)
        assert (status, body["error"]["code"]) == (502, "endpoint_refused"), base
    assert platform.llm.requests == []


async def test_an_operator_may_allow_a_named_internal_endpoint(
    sqlite_url: str, openai_server: FakeOpenAI, redirector: str
) -> None:
    """GATEWAY_ALLOWED_ENDPOINTS, e.g. an in-cluster Ollama; a redirect is still refused."""
    fake_host = openai_server.url.split("/")[2]
    settings = load_settings(
        PlatformSettings,
        {
            "DATABASE_URL": sqlite_url, "GATEWAY_CACHE_SECONDS": "0",
            "GATEWAY_ALLOWED_ENDPOINTS": f"{fake_host},{redirector.split('/')[2]}",
        },
    )  # fmt: skip
    await upgrade(sqlite_url)
    database, key = Database(sqlite_url), generate_key()
    vault = Vault([key])
    gateway = build_gateway(settings=settings, database=database, vault=vault)
    await gateway.start("127.0.0.1", 0)
    platform = Platform(database, key, settings, gateway, openai_server)
    try:
        openai_server.expected_key = USER_KEY
        _, allowed = await platform.agent(
            provider="custom", model="llama3.1:8b", llm_base_url=openai_server.url,
            llm_api_key_encrypted=vault.encrypt(USER_KEY),
        )  # fmt: skip
        assert (await complete(platform, allowed))[0] == 200
        assert openai_server.chat_requests()[-1]["model"] == "llama3.1:8b"
        _, redirected = await platform.agent(provider="custom", llm_base_url=f"{redirector}/v1")
        status, body = await complete(platform, redirected)
        assert (status, body["error"]["code"]) == (502, "endpoint_refused")
    finally:
        await gateway.stop()
        await database.close()


# -- photos and voice -------------------------------------------------------------------


async def transcribe(platform: Platform, credential: str, audio: bytes) -> tuple[int, Any]:
    """One transcription through the gateway, as the runtime's SDK uploads it."""
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", audio, filename="voice.ogg", content_type="audio/ogg")
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{platform.gateway.url}/audio/transcriptions", data=form, headers=headers)
        as response,
    ):  # fmt: skip
        return response.status, await response.json()


async def test_voice_is_transcribed_at_the_platform_provider_and_charged_by_the_second(
    platform: Platform,
) -> None:
    agent, credential = await platform.agent(
        provider="anthropic", model="claude-haiku-4-5",  # transcription is the platform's
        llm_api_key_encrypted=platform.vault.encrypt(USER_KEY),
    )  # fmt: skip
    status, body = await transcribe(platform, "", b"hello from voice")
    assert (status, body["error"]["code"]) == (401, "invalid_gateway_credential")
    client = openai.AsyncOpenAI(base_url=platform.gateway.url, api_key=credential, max_retries=0)
    result = await client.audio.transcriptions.create(
        model="anything", file=("voice.ogg", b"hello from voice")
    )
    await client.close()
    assert result.text == "hello from voice"
    [sent] = platform.llm.transcription_requests()  # the 401 never went upstream
    assert sent["model"] == "whisper-1" and sent["file_bytes"] == b"hello from voice"
    await platform.gateway.flush()
    # The fake reports 16 bytes as 4 seconds; 100 tokens a second.
    assert await platform.stored_tokens(agent.id) == 400


@pytest.mark.parametrize("gateway_env", [{"TRANSCRIPTION_MODEL": ""}])
async def test_a_platform_without_transcription_answers_501(platform: Platform) -> None:
    _, credential = await platform.agent()
    status, body = await transcribe(platform, credential, b"hello")
    assert (status, body["error"]["code"]) == (501, "transcription_unavailable")
    assert platform.llm.transcription_requests() == []


async def test_a_provider_without_the_endpoint_is_no_transcription_either(
    platform: Platform,
) -> None:
    agent, credential = await platform.agent()
    platform.llm.transcription = False
    status, body = await transcribe(platform, credential, b"hello")
    assert (status, body["error"]["code"]) == (501, "transcription_unavailable")
    await platform.gateway.flush()
    assert await platform.stored_tokens(agent.id) == 0  # nothing heard, nothing charged


async def test_an_image_inline_passes_and_is_not_charged_by_its_bytes(platform: Platform) -> None:
    _, credential = await platform.agent(daily_token_budget=5_000)
    image = "data:image/jpeg;base64," + base64.b64encode(b"\xff" * 3 * 1024 * 1024).decode()
    messages = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image}},
        ]},
    ]  # fmt: skip
    status, body = await complete(platform, credential, body={"model": "x", "messages": messages})
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("I see an image")
    assert platform.llm.image_parts() == [{"type": "image_url", "image_url": {"url": image}}]


async def test_an_agent_behind_the_gateway_answers_voice_or_says_it_cannot_listen(
    platform: Platform, telegram: FakeTelegram
) -> None:
    _, credential = await platform.agent()
    bot = telegram.add_bot(username="voice_bot", first_name="Voice")
    settings = load_settings(
        RuntimeSettings,
        {
            "BOT_TOKEN": bot.token, "AGENT_ID": "voice1", "LLM_MODEL": "gpt-4o-mini",
            "LLM_BASE_URL": platform.gateway.url, "LLM_API_KEY": credential,
            "MODE": "polling", "TELEGRAM_API_URL": telegram.url, "PORT": str(free_port()),
        },
    )  # fmt: skip
    runtime = Runtime(settings)
    await runtime.start()
    try:
        user = telegram.user(bot)
        await user.send_voice(data=b"hello from voice")
        await user.wait_for(text_contains="echo: hello from voice", timeout=15)
        platform.llm.transcription = False
        await user.send_voice(data=b"hello again")
        await user.wait_for(text_contains="I can't listen to voice messages yet", timeout=15)
    finally:
        await runtime.stop()
