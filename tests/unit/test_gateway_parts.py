"""The gateway's parts on their own: usage read from a stream, the rate bucket, the ledger,
the catalogue's capabilities and what agents are told of them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.local import runtime_settings
from manager_bot.backends.manifests import runtime_env
from manager_bot.config import PlatformSettings
from manager_bot.db.migrate import upgrade
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.accounts import AgentAccount
from manager_bot.gateway.ledger import Admission, UsageLedger
from manager_bot.gateway.limits import UserRateLimiter
from manager_bot.gateway.streams import IMAGE_TOKENS_BOUND, UsageScanner, prompt_bound
from manager_bot.gateway.transcription import transcriber_for
from manager_bot.services.providers import available_providers, sees_images
from runtime.settings_loading import load_settings


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def test_usage_is_found_however_the_stream_is_cut_into_chunks() -> None:
    stream = sse(
        {"choices": [{"delta": {"content": "hi"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}},
    )
    for size in (1, 2, 7, 64, len(stream)):
        scanner = UsageScanner()
        for start in range(0, len(stream), size):
            scanner.feed(stream[start : start + size])
        assert scanner.reported.found, size
        assert (scanner.reported.prompt_tokens, scanner.reported.completion_tokens) == (12, 3)


def test_the_prompt_bound_is_never_below_its_bytes() -> None:
    messages = [{"role": "user", "content": "привет " * 100}, {"role": "user", "content": [1]}]
    assert prompt_bound(messages) >= len(("привет " * 100).encode()) + len("[1]")


def test_each_user_gets_a_burst_then_the_rate() -> None:
    now = [0.0]
    limiter = UserRateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limiter.allow("a", "u") for _ in range(2)] == [0.0, 0.0]
    assert limiter.allow("a", "u") == 10.0  # 6 a minute: one every 10 s
    assert limiter.allow("a", "other") == 0.0 and limiter.allow("b", "u") == 0.0
    now[0] = 10.0
    assert limiter.allow("a", "u") == 0.0


def account(budget: int) -> AgentAccount:
    return AgentAccount(
        agent_id="a1", owner_id=1, model="m", refusal=None, budget=budget,
        used_in_database=0, day=datetime.now(UTC).date(), upstream=None, fetched_at=0.0,
    )  # fmt: skip


async def test_the_ledger_keeps_counting_what_it_is_writing(sqlite_url: str) -> None:
    """Usage taken out to be written still counts until the write is done (no window in
    which the budget looks unspent)."""
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    ledger = UsageLedger(database=database, flush_seconds=60)
    agent = account(budget=100)
    try:
        assert ledger.admit(agent, prompt_bound=10, max_tokens=20) is Admission.ADMITTED
        ledger.settle(agent, reserved=30, prompt_tokens=50, completion_tokens=20)
        assert ledger.used(agent) == 70
        # Another process holds the write lock: the flush has taken the counts out and
        # waits on the database.
        other = sqlite3.connect(make_url(sqlite_url).database or "", timeout=0)
        other.execute("BEGIN IMMEDIATE")
        writing = asyncio.create_task(ledger.flush())
        await asyncio.sleep(0.05)
        assert not writing.done() and ledger.used(agent) == 70
        assert ledger.admit(agent, prompt_bound=40, max_tokens=20) is Admission.EXHAUSTED
        other.rollback()
        other.close()
        await writing
        assert ledger.used(agent) == 70
        # Room left, but held by a request in flight: try again, not "exhausted".
        assert ledger.admit(agent, prompt_bound=10, max_tokens=20) is Admission.ADMITTED
        assert ledger.admit(agent, prompt_bound=10, max_tokens=20) is Admission.RESERVED
    finally:
        await database.close()


async def test_a_stop_in_the_middle_of_a_write_loses_nothing(sqlite_url: str) -> None:
    """close() waits for a write in progress instead of cancelling it, then writes the rest."""
    await upgrade(sqlite_url)
    database = Database(sqlite_url)
    try:
        for attempt in range(8):
            ledger = UsageLedger(database=database, flush_seconds=0.01)
            agent = account(budget=0)
            ledger.start()
            for _ in range(20):
                ledger.settle(agent, reserved=0, prompt_tokens=1, completion_tokens=1)
                await asyncio.sleep(0.002 * attempt)  # stop at ever other moments
            await asyncio.wait_for(ledger.close(), timeout=10)
        async with database.session() as session:
            totals = await Repositories(session).usage.totals(since=agent.day)
        assert totals["a1"].tokens == 8 * 20 * 2 and totals["a1"].requests == 8 * 20
    finally:
        await database.close()


def test_an_image_part_counts_a_fixed_bound_not_its_bytes() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 100_000}}
    text = {"type": "text", "text": "What is this?"}
    bound = prompt_bound([{"role": "user", "content": [text, image]}])
    assert IMAGE_TOKENS_BOUND < bound < IMAGE_TOKENS_BOUND + 100


def test_the_catalogue_says_which_models_see_and_who_transcribes() -> None:
    settings = load_settings(PlatformSettings, {"OPENAI_API_KEY": "sk-platform"})
    providers = available_providers(settings)
    assert sees_images(providers, "openai", "gpt-4o-mini")
    assert sees_images(providers, "anthropic", "claude-sonnet-4-5")
    assert not sees_images(providers, "openai", "some-model-typed-by-hand")
    assert not sees_images(providers, "custom", "llava")  # a user's endpoint: blind
    transcriber = transcriber_for(providers, "whisper-1")
    assert transcriber is not None and transcriber.url.endswith("/v1/audio/transcriptions")
    assert transcriber_for(providers, "") is None
    without_key = tuple(replace(provider, platform_key=None) for provider in providers)
    assert transcriber_for(without_key, "whisper-1") is None


def test_pods_and_processes_are_told_whether_the_model_sees() -> None:
    secrets = AgentSecrets(bot_token=SecretStr("1:x"), webhook_secret=SecretStr("w" * 32))
    for vision, word in ((True, "true"), (False, "false")):
        spec = AgentSpec(
            agent_id="a1", secrets=secrets, llm_model="m", system_prompt="p", llm_vision=vision
        )
        env = {item["name"]: item.get("value") for item in runtime_env(spec)}
        assert env["LLM_VISION"] == word
        local = runtime_settings(
            spec, prompt_file=Path("p"), log_file=Path("l"), log_max_bytes=1024, log_backups=1
        )
        assert local["LLM_VISION"] == word
