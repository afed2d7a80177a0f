"""The fake Bot API behaves like Telegram on the points Hatchbot relies on.

Driven through the real aiogram Bot (form-encoded requests) and through raw
JSON requests (the runtime's wire format).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    BotCommandScopeChat,
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
)
from aiohttp import web

from tests.fakes.telegram_api import FakeBot, FakeTelegram


@pytest.fixture
async def manager(telegram: FakeTelegram) -> AsyncIterator[tuple[FakeBot, Bot]]:
    fake = telegram.add_bot(username="manager_bot", can_manage_bots=True)
    bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
    yield fake, bot
    await bot.session.close()


async def raw(telegram: FakeTelegram, token: str, method: str, **params: object) -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{telegram.url}/bot{token}/{method}", json=params) as response,
    ):
        body: dict = await response.json()
        return body


async def test_unknown_and_revoked_tokens_get_401(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    assert (await bot.get_me()).username == "manager_bot"
    body = await raw(telegram, "123456:nope", "getMe")
    assert body == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    telegram.revoke(fake.token)
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()


async def test_get_updates_offset_and_long_poll(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    user = telegram.user(fake)
    await user.send("first")
    await user.send("second")
    updates = await bot.get_updates(timeout=0)
    assert [u.message.text for u in updates if u.message] == ["first", "second"]
    confirmed = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
    assert confirmed == []

    async def later() -> None:
        await asyncio.sleep(0.2)
        await user.send("third")

    sender = asyncio.create_task(later())
    waited = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=5)
    await sender
    assert [u.message.text for u in waited if u.message] == ["third"]


async def test_get_updates_conflicts_with_a_webhook(telegram: FakeTelegram, manager) -> None:
    _, bot = manager
    await bot.set_webhook("http://127.0.0.1:9/hook", secret_token="s3cret")
    with pytest.raises(TelegramConflictError):
        await bot.get_updates(timeout=0)
    await bot.delete_webhook()
    assert await bot.get_updates(timeout=0) == []


async def test_webhook_push_with_secret_and_recorded_errors(
    telegram: FakeTelegram, manager
) -> None:
    fake, bot = manager
    received: list[tuple[str | None, dict]] = []
    accept = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(
            (request.headers.get("X-Telegram-Bot-Api-Secret-Token"), await request.json())
        )
        return web.Response(status=200 if accept.is_set() else 401)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="good_secret-1")
        await telegram.user(fake).send("hello")
        for _ in range(100):
            info = await bot.get_webhook_info()
            if info.last_error_message:
                break
            await asyncio.sleep(0.05)
        assert info.last_error_message == "Wrong response from the webhook: 401 Unauthorized"
        assert info.pending_update_count == 1
        accept.set()
        for _ in range(100):
            info = await bot.get_webhook_info()
            if info.pending_update_count == 0:
                break
            await asyncio.sleep(0.05)
        assert info.pending_update_count == 0
        assert received[-1][0] == "good_secret-1"
        assert received[-1][1]["message"]["text"] == "hello"
    finally:
        await runner.cleanup()


async def test_connection_refused_is_recorded(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    await bot.set_webhook("http://127.0.0.1:9/nothing-listens")
    await telegram.user(fake).send("hello")
    for _ in range(100):
        info = await bot.get_webhook_info()
        if info.last_error_message:
            break
        await asyncio.sleep(0.05)
    assert info.last_error_message == "Connection refused"


async def test_limits_match_telegram(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    chat = telegram.user(fake).chat_id
    await bot.send_message(chat, "x" * 4096)
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(chat, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(chat, " ")
    long_data = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="b", callback_data="d" * 65)]]
    )
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(chat, "hi", reply_markup=long_data)
    with pytest.raises(TelegramBadRequest, match="unallowed characters"):
        await bot.set_webhook("https://example.com/hook", secret_token="has space")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(chat, "<b>unclosed", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="can't parse entities"):
        await bot.send_message(chat, "1. done.", parse_mode="MarkdownV2")
    sent = await bot.send_message(chat, "<b>bold</b> &amp; plain", parse_mode="HTML")
    assert sent.text == "bold & plain"


async def test_json_requests_keep_strings_as_strings(telegram: FakeTelegram) -> None:
    fake = telegram.add_bot(username="agent_bot")
    user = telegram.user(fake)
    body = await raw(telegram, fake.token, "sendMessage", chat_id=user.chat_id, text="12345")
    assert body["ok"] and body["result"]["text"] == "12345"
    assert user.last_message()["text"] == "12345"


async def test_faults_and_rate_limits(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    chat = telegram.user(fake).chat_id
    telegram.inject_fault("sendMessage", status=429, retry_after=3)
    with pytest.raises(TelegramRetryAfter) as caught:
        await bot.send_message(chat, "hi")
    assert caught.value.retry_after == 3
    telegram.inject_fault("sendMessage", status=500)
    with pytest.raises(TelegramServerError):
        await bot.send_message(chat, "hi")
    await bot.send_message(chat, "works again")

    telegram.set_rate_limit(fake, per_second=5)
    outcomes = []
    for index in range(8):
        try:
            await bot.send_message(chat, f"m{index}")
            outcomes.append("sent")
        except TelegramRetryAfter:
            outcomes.append("429")
    assert outcomes.count("sent") <= 5 and "429" in outcomes


async def test_blocked_user_gives_403(telegram: FakeTelegram) -> None:
    fake = telegram.add_bot(username="agent_bot")
    user = telegram.user(fake)
    telegram.block(fake, user.id)
    body = await raw(telegram, fake.token, "sendMessage", chat_id=user.chat_id, text="hi")
    assert body["error_code"] == 403
    assert body["description"] == "Forbidden: bot was blocked by the user"


async def test_managed_bot_creation_and_tokens(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    user = telegram.user(fake)
    await user.send("/deploy")
    markup = {
        "keyboard": [
            [
                {
                    "text": "Create my bot",
                    "request_managed_bot": {"request_id": 1, "suggested_username": "my_ai_bot"},
                }
            ]
        ],
        "resize_keyboard": True,
    }
    await raw(
        telegram, fake.token, "sendMessage", chat_id=user.chat_id, text="Tap", reply_markup=markup
    )
    managed = await user.create_managed_bot(username="my_ai_bot", name="My AI")
    updates = await bot.get_updates(timeout=0)
    kinds = [u.event_type for u in updates]
    assert "managed_bot" in kinds
    created = [u.message for u in updates if u.message and u.message.managed_bot_created]
    assert created[0].managed_bot_created.bot_user.username == "my_ai_bot"
    managed_update = next(u.managed_bot for u in updates if u.managed_bot)
    assert managed_update.bot_user.id == managed.id and managed_update.user.id == user.id

    token = await bot.get_managed_bot_token(user_id=managed.id)
    assert token == managed.token
    agent = Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.url)))
    assert (await agent.get_me()).username == "my_ai_bot"
    new_token = await bot.replace_managed_bot_token(user_id=managed.id)
    assert new_token != token
    with pytest.raises(TelegramUnauthorizedError):
        await agent.get_me()
    await agent.session.close()
    other = telegram.add_bot(username="not_managed_bot")
    with pytest.raises(TelegramBadRequest):
        await bot.get_managed_bot_token(user_id=other.id)


async def test_drafts_commands_edits_and_deletes(telegram: FakeTelegram, manager) -> None:
    fake, bot = manager
    user = telegram.user(fake)
    assert await bot.send_message_draft(chat_id=user.chat_id, draft_id=7, text="thinking")
    assert user.drafts()[0]["text"] == "thinking"
    await bot.set_my_commands([BotCommand(command="start", description="Start")])
    await bot.set_my_commands(
        [BotCommand(command="broadcast", description="Admins")],
        scope=BotCommandScopeChat(chat_id=user.chat_id),
    )
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    scoped = await bot.get_my_commands(scope=BotCommandScopeChat(chat_id=user.chat_id))
    assert [c.command for c in scoped] == ["broadcast"]

    sent = await bot.send_message(user.chat_id, "step 1")
    waiting = asyncio.create_task(user.wait_for(text_contains="step 2"))
    await bot.edit_message_text("step 2", chat_id=user.chat_id, message_id=sent.message_id)
    assert (await waiting)["message_id"] == sent.message_id
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text("step 2", chat_id=user.chat_id, message_id=sent.message_id)
    pasted = await user.send("secret stuff")
    assert await bot.delete_message(user.chat_id, pasted["message_id"])
    assert pasted["message_id"] in user.deleted_own_messages()
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text("x", chat_id=user.chat_id, message_id=999)
    doc = await bot.send_document(
        user.chat_id, BufferedInputFile(b"log lines", filename="agent.log")
    )
    assert doc.document is not None and doc.document.file_name == "agent.log"
    assert user.last_message()["document"]["file_size"] == len(b"log lines")


async def test_wait_for_times_out_with_context(telegram: FakeTelegram) -> None:
    fake = telegram.add_bot(username="quiet_bot")
    user = telegram.user(fake)
    await user.send("anyone?")
    with pytest.raises(AssertionError, match="no message matching"):
        await user.wait_for(text_contains="never", timeout=0.2)
