"""The doctor's checks of webhook mode: Telegram points at us, Redis answers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from manager_bot.config import ManagerSettings
from manager_bot.doctor import Check
from manager_bot.intake.listener import webhook_url

TIMEOUT = 10.0


async def webhook_checks(settings: ManagerSettings) -> list[Check]:
    if not settings.manager_webhook:
        return []  # polling: nothing to check beyond the token
    return [
        await _guarded("webhook", _webhook(settings)),
        await _guarded("redis", _redis(settings)),
    ]


async def _guarded(name: str, check: Coroutine[Any, Any, Check]) -> Check:
    try:
        async with asyncio.timeout(TIMEOUT):
            return await check
    except TimeoutError:
        return Check(name, False, f"no answer within {TIMEOUT:.0f} s")
    except Exception as error:  # a driver's message may hold a URL: the type only
        return Check(name, False, f"{type(error).__name__}")


async def _webhook(settings: ManagerSettings) -> Check:
    """getWebhookInfo names the URL Telegram posts to; the secret it cannot show, so
    the check is that the URL's path is the one derived from MANAGER_WEBHOOK_SECRET."""
    from aiogram import Bot
    from aiogram.client.telegram import TelegramAPIServer

    from manager_bot.telegram_session import JsonSession

    secret, public_url = settings.manager_webhook_secret, settings.public_url
    assert secret is not None and public_url is not None  # the settings require both
    expected = webhook_url(public_url, secret)
    session = JsonSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    bot = Bot(settings.manager_bot_token.get_secret_value(), session=session)
    try:
        info = await bot.get_webhook_info()
    finally:
        await session.close()
    if not info.url:
        return Check("webhook", False, "not set: the manager sets it when it starts")
    if info.url != expected:
        return Check(
            "webhook", False,
            f"Telegram posts to {_shown(info.url)}, not to {_shown(expected)} "
            "(another MANAGER_WEBHOOK_SECRET or PUBLIC_URL?): restart the manager to set it",
        )  # fmt: skip
    if "managed_bot" not in (info.allowed_updates or []):
        return Check("webhook", False, "set without managed_bot updates: restart the manager")
    if info.last_error_message:
        return Check(
            "webhook", True,
            f"set to {_shown(expected)}; Telegram's last delivery error: {info.last_error_message}",
            warning=True,
        )  # fmt: skip
    return Check(
        "webhook", True,
        f"set to {_shown(expected)}, {info.pending_update_count} updates waiting",
    )  # fmt: skip


def _shown(url: str) -> str:
    """The URL with its secret-derived path cut short: enough to compare, not to post."""
    head, marker, path = url.partition("/telegram/")
    return f"{head}{marker}{path[:6]}…" if marker else url


async def _redis(settings: ManagerSettings) -> Check:
    if settings.redis_url is None:
        return Check("redis", True, "not set: MANAGER_REPLICAS=1, one manager, no Redis needed")
    from redis.asyncio import Redis

    client = Redis.from_url(settings.redis_url.get_secret_value())
    try:
        await client.ping()
    finally:
        await client.aclose()
    return Check("redis", True, "reachable: per-user inboxes, locks and wizard state")
