"""`python -m manager_bot doctor` in webhook mode: Telegram's webhook and Redis."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp

from tests.fakes.telegram_api import FakeTelegram
from tests.integration.test_doctor import doctor

SECRET = "doctor-webhook-secret"
PUBLIC_URL = "https://manager.example.com"


async def test_webhook_mode_checks_telegrams_webhook_and_redis(
    telegram: FakeTelegram, sqlite_url: str, redis_url: str, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    env = {
        "MANAGER_BOT_TOKEN": manager.token, "TELEGRAM_API_URL": telegram.url,
        "DATABASE_URL": sqlite_url, "PUBLIC_URL": PUBLIC_URL, "MANAGER_WEBHOOK": "true",
        "MANAGER_WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url,
    }  # fmt: skip
    code, checks, output = await doctor(tmp_path, env)
    assert code == 1
    assert checks["webhook"] == "FAIL not set: the manager sets it when it starts", output
    assert checks["redis"].startswith("PASS reachable"), output

    # Set as the manager sets it: the path is the secret's SHA-256, cut to 32 hex digits.
    path = hashlib.sha256(SECRET.encode()).hexdigest()[:32]
    hook = {
        "url": f"{PUBLIC_URL}/telegram/{path}", "secret_token": SECRET,
        "allowed_updates": ["message", "callback_query", "managed_bot"],
    }  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{telegram.url}/bot{manager.token}/setWebhook", json=hook) as response,
    ):
        assert response.status == 200
    _, checks, output = await doctor(tmp_path, env)
    assert checks["webhook"].startswith(f"PASS set to {PUBLIC_URL}/telegram/{path[:6]}…"), output
    assert path not in output and SECRET not in output

    # Another secret: another path, which Telegram does not post to.
    _, checks, output = await doctor(tmp_path, {**env, "MANAGER_WEBHOOK_SECRET": "other"})
    assert checks["webhook"].startswith("FAIL Telegram posts to"), output

    dead = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    code, checks, _ = await doctor(tmp_path, dead)
    assert code == 1
    assert checks["redis"].startswith("FAIL ConnectionError"), checks
