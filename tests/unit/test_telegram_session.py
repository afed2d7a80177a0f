"""JsonSession sends what aiogram's own session sends, as one JSON body.

Each call goes through both sessions to the fake Telegram over real HTTP, and the
parameters the fake decoded (form fields, or the JSON object) must be equal.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ChatAction
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import SendMediaGroup
from aiogram.types import (
    BotCommand,
    BotCommandScopeChat,
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    MessageEntity,
)

from manager_bot.telegram_session import JsonSession
from tests.fakes.telegram_api import ApiCall, FakeBot, FakeTelegram

CHAT = 5550001
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# As the manager's bot has it (parse_mode), plus defaults that resolve to objects and to
# False, which aiogram sends as "false" rather than leaving out.
DEFAULTS = DefaultBotProperties(
    parse_mode="HTML", link_preview_is_disabled=True, protect_content=False
)

Bots = dict[str, Bot]


def keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text="Restart", callback_data="ag:restart:7"),
                InlineKeyboardButton(text="Docs", url="https://example.com/docs"),
            ],
            [InlineKeyboardButton(text="« Back", callback_data="menu:agents")],
        ]
    )


@pytest.fixture
async def bots(telegram: FakeTelegram) -> AsyncIterator[tuple[FakeBot, Bots]]:
    """The same bot twice: through aiogram's form session ("form") and ours ("json")."""
    fake = telegram.add_bot(username="manager_bot")
    api = TelegramAPIServer.from_base(telegram.url)
    both = {
        "form": Bot(fake.token, session=AiohttpSession(api=api), default=DEFAULTS),
        "json": Bot(fake.token, session=JsonSession(api=api), default=DEFAULTS),
    }
    yield fake, both
    for bot in both.values():
        await bot.session.close()


async def received(
    telegram: FakeTelegram, bots: Bots, method: str, call: Callable[[Bot], Awaitable[Any]]
) -> dict[str, ApiCall]:
    """What the fake recorded when `call` was made through each session."""
    seen = {}
    for name, bot in bots.items():
        await call(bot)
        seen[name] = telegram.calls(method)[-1]
    return seen


def assert_same_params(seen: dict[str, ApiCall]) -> None:
    assert seen["json"].params == seen["form"].params
    assert seen["form"].content_type == FORM
    assert seen["json"].content_type == JSON


async def test_send_message_with_defaults_keyboard_and_falsy_values(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots

    async def send(bot: Bot) -> None:
        message = await bot.send_message(
            CHAT,
            "<b>Agent</b> is running",
            reply_markup=keyboard(),
            disable_notification=False,
            message_thread_id=0,
        )
        assert message.text == "Agent is running"

    seen = await received(telegram, both, "sendMessage", send)
    assert_same_params(seen)
    assert seen["json"].params == {
        "chat_id": CHAT,
        "text": "<b>Agent</b> is running",
        "message_thread_id": 0,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
        "disable_notification": False,
        "disable_web_page_preview": True,  # aiogram resolves the old field's default too
        "protect_content": False,
        "reply_markup": keyboard().model_dump(exclude_none=True),
    }


async def test_send_message_with_entities_and_no_parse_mode(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots
    entities = [
        MessageEntity(type="bold", offset=0, length=5),
        MessageEntity(type="text_link", offset=6, length=4, url="https://example.com"),
    ]

    async def send(bot: Bot) -> None:
        await bot.send_message(CHAT, "Agent docs", entities=entities, parse_mode=None)

    seen = await received(telegram, both, "sendMessage", send)
    assert_same_params(seen)
    assert "parse_mode" not in seen["json"].params  # an explicit None is left out
    assert seen["json"].params["entities"] == [
        {"type": "bold", "offset": 0, "length": 5},
        {"type": "text_link", "offset": 6, "length": 4, "url": "https://example.com"},
    ]


async def test_edit_message_text(telegram: FakeTelegram, bots: tuple[FakeBot, Bots]) -> None:
    _, both = bots
    sent = {name: await bot.send_message(CHAT, "card") for name, bot in both.items()}

    async def edit(bot: Bot) -> None:
        name = "json" if isinstance(bot.session, JsonSession) else "form"
        edited = await bot.edit_message_text(
            text="<i>Agent</i> card",
            chat_id=CHAT,
            message_id=sent[name].message_id,
            reply_markup=keyboard(),
        )
        assert not isinstance(edited, bool) and edited.text == "Agent card"

    seen = await received(telegram, both, "editMessageText", edit)
    # Each session edits its own message: the same call but for the message's id.
    for name, call in seen.items():
        assert call.params.pop("message_id") == sent[name].message_id
    assert_same_params(seen)


async def test_set_my_commands_with_a_scope(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots
    commands = [BotCommand(command="deploy", description="Deploy an agent")]

    async def set_commands(bot: Bot) -> None:
        scope = BotCommandScopeChat(chat_id=CHAT)
        assert await bot.set_my_commands(commands, scope=scope, language_code="ru")

    seen = await received(telegram, both, "setMyCommands", set_commands)
    assert_same_params(seen)
    assert seen["json"].params["scope"] == {"type": "chat", "chat_id": CHAT}


async def test_answer_callback_query_with_show_alert(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots

    async def answer(bot: Bot) -> None:
        assert await bot.answer_callback_query("query-1", text="", show_alert=True, cache_time=0)

    seen = await received(telegram, both, "answerCallbackQuery", answer)
    assert_same_params(seen)
    # aiogram leaves out the empty text, and sends show_alert and a cache_time of 0.
    assert seen["json"].params == {
        "callback_query_id": "query-1",
        "show_alert": True,
        "cache_time": 0,
    }


async def test_an_enum_is_sent_as_its_value(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots

    async def typing(bot: Bot) -> None:
        assert await bot.send_chat_action(CHAT, ChatAction.TYPING)

    seen = await received(telegram, both, "sendChatAction", typing)
    assert_same_params(seen)
    assert seen["json"].params["action"] == "typing"


async def test_a_datetime_is_sent_as_unix_time(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots
    until = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)

    async def ban(bot: Bot) -> None:
        # The fake does not know banChatMember: it records the call and answers 404.
        with pytest.raises(TelegramNotFound):
            await bot.ban_chat_member(CHAT, 42, until_date=until, revoke_messages=False)

    seen = await received(telegram, both, "banChatMember", ban)
    assert_same_params(seen)
    assert seen["json"].params == {
        "chat_id": CHAT,
        "user_id": 42,
        "until_date": 1893456000,
        "revoke_messages": False,
    }


async def test_a_file_upload_falls_back_to_multipart(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    _, both = bots
    picture = b"\x89PNG fake picture bytes"

    async def send(bot: Bot) -> None:
        photo = BufferedInputFile(picture, filename="card.png")
        message = await bot.send_photo(CHAT, photo, caption="<b>Card</b>")
        assert message.photo and message.caption == "Card"

    seen = await received(telegram, both, "sendPhoto", send)
    for call in seen.values():
        assert call.content_type == "multipart/form-data"
        attached = call.params.pop("photo").removeprefix("attach://")
        assert call.params.pop("_files") == {attached: ("card.png", picture)}
    assert seen["json"].params == seen["form"].params


async def test_input_media_with_a_file_is_not_sent_as_json(bots: tuple[FakeBot, Bots]) -> None:
    _, both = bots
    session = both["json"].session
    assert isinstance(session, JsonSession)
    album = SendMediaGroup(
        chat_id=CHAT, media=[InputMediaPhoto(media=BufferedInputFile(b"x", filename="a.png"))]
    )
    assert session.build_json_body(bot=both["json"], method=album) is None
    by_id = SendMediaGroup(chat_id=CHAT, media=[InputMediaPhoto(media="photo-file-id")])
    assert session.build_json_body(bot=both["json"], method=by_id) is not None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, TelegramBadRequest),
        (403, TelegramForbiddenError),
        (429, TelegramRetryAfter),
        (500, TelegramServerError),
    ],
)
async def test_telegram_errors_raise_the_same_exception(
    telegram: FakeTelegram,
    bots: tuple[FakeBot, Bots],
    status: int,
    error: type[TelegramAPIError],
) -> None:
    fake, both = bots
    raised = {}
    for name, bot in both.items():
        telegram.inject_fault("sendMessage", status=status, retry_after=3, bot=fake)
        with pytest.raises(TelegramAPIError) as caught:
            await bot.send_message(CHAT, "hello")
        raised[name] = caught.value
    assert type(raised["json"]) is type(raised["form"]) is error
    assert raised["json"].message == raised["form"].message
    if status == 429:
        assert isinstance(raised["json"], TelegramRetryAfter)
        assert raised["json"].retry_after == 3


async def test_a_slow_answer_times_out_as_a_network_error(
    telegram: FakeTelegram, bots: tuple[FakeBot, Bots]
) -> None:
    fake, both = bots
    for bot in both.values():
        telegram.inject_fault("sendMessage", status=None, delay=1.0, bot=fake)
        with pytest.raises(TelegramNetworkError, match="Request timeout error"):
            await bot.send_message(CHAT, "hello", request_timeout=0.2)


async def test_connection_refused_is_a_network_error() -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = TelegramAPIServer.from_base(f"http://127.0.0.1:{port}")
    refused = {AiohttpSession: "ClientConnectorError", JsonSession: "cannot connect to 127.0.0.1"}
    for kind, words in refused.items():
        session = kind(api=api)
        bot = Bot("123456:" + "a" * 35, session=session)
        try:
            with pytest.raises(TelegramNetworkError, match=words) as caught:
                await bot.send_message(CHAT, "hello")
            assert bot.token not in str(caught.value)  # the URL carries it; the error never
        finally:
            await session.close()
