"""A fake Telegram Bot API server on 127.0.0.1, faithful on the points Hatchbot relies on.

aiogram reaches it through `TelegramAPIServer.from_base(fake.url)`, the runtime
through plain HTTP at `{url}/bot{token}/{method}`. It knows several bots by
token, lets tests act as users (see `tests/fakes/user.py`), delivers updates by
long polling or by webhook like Telegram (secret header, retries, recorded
delivery errors), enforces Telegram's limits with Telegram's error texts, and
can inject faults and rate limits. Files users send (`store_file`) are served
like Telegram's: `getFile`, then `GET {url}/file/bot{token}/{file_path}`.

Wire format: aiogram posts form data in which strings arrive raw and every
other value JSON-encoded; the runtime posts JSON. Both are decoded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.loopback import serve_on_loopback
from tests.fakes.telegram_markup import MarkupError, check_markup

JsonDict = dict[str, Any]

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_DOWNLOAD = 20 * 1024 * 1024  # getFile: bots download files of up to 20 MB
MAX_DESCRIPTION = 512  # setMyDescription: 0-512 characters
MAX_SHORT_DESCRIPTION = 120  # setMyShortDescription: 0-120 characters
MAX_ADDED_USERS = 10  # setManagedBotAccessSettings: up to 10 besides the owner
SECRET_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
# Fields that are strings in the Bot API: kept raw even when they look like JSON.
STRING_FIELDS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "url",
        "secret_token",
        "callback_query_id",
        "action",
        "language_code",
        "photo",
        "document",
        "ip_address",
        "inline_message_id",
        "business_connection_id",
        "certificate",
        "description",
        "short_description",
        "name",
    }
)
RATE_LIMITED_METHODS = frozenset(
    {"sendMessage", "sendPhoto", "sendDocument", "editMessageText", "copyMessage"}
)
_ids = itertools.count(7_000_000_001)


class TelegramError(Exception):
    """An error answer: becomes `{"ok": false, "error_code", "description"}`."""

    def __init__(self, code: int, description: str, *, parameters: JsonDict | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def bad_request(detail: str) -> TelegramError:
    return TelegramError(400, f"Bad Request: {detail}")


def make_token(bot_id: int) -> str:
    alphabet = string.ascii_letters + string.digits + "_-"
    return f"{bot_id}:" + "".join(secrets.choice(alphabet) for _ in range(35))


@dataclass
class WebhookState:
    url: str
    secret_token: str | None = None
    allowed_updates: list[str] | None = None
    max_connections: int = 40
    last_error_date: int | None = None
    last_error_message: str | None = None
    delivered: int = 0


@dataclass
class ApiCall:
    """One request as the fake understood it (for assertions and request logs)."""

    method: str
    bot: FakeBot | None
    params: JsonDict
    at: float
    status: int = 200
    # The request's media type: form data and multipart from aiogram, JSON from others.
    content_type: str = ""


@dataclass
class Fault:
    method: str
    status: int | None
    retry_after: int | None
    delay: float
    times: int
    bot: FakeBot | None
    description: str | None
    chat_id: int | None = None
    after: int = 0  # matching calls let through before the fault applies


@dataclass(eq=False)
class FakeBot:
    """A bot the fake knows: its identity, what it sent, its webhook and update queue."""

    id: int
    username: str
    first_name: str
    token: str
    can_manage_bots: bool = False
    manager: FakeBot | None = None  # the bot that created this one through Managed Bots
    webhook: WebhookState | None = None
    sent: list[JsonDict] = field(default_factory=list)
    # The same messages by chat: simulated users look up their own chat on every change,
    # and a scan of `sent` made the load generator quadratic in bench/manager.py.
    sent_by_chat: dict[int, list[JsonDict]] = field(default_factory=dict)
    deleted: list[tuple[int, int]] = field(default_factory=list)
    drafts: list[JsonDict] = field(default_factory=list)
    chat_actions: list[JsonDict] = field(default_factory=list)
    commands: dict[str, list[JsonDict]] = field(default_factory=dict)
    # By language code ("" for the default), as setMyDescription and friends keep them.
    descriptions: dict[str, str] = field(default_factory=dict)
    short_descriptions: dict[str, str] = field(default_factory=dict)
    # A Managed Bot's access settings (changed only by its manager bot).
    access_restricted: bool = False
    access_user_ids: list[int] = field(default_factory=list)
    callback_answers: list[JsonDict] = field(default_factory=list)
    pending: deque[JsonDict] = field(default_factory=deque)
    next_update_id: int = 1
    revoked_tokens: set[str] = field(default_factory=set)
    # Bumped on every message sent or edited: waiters compare against it.
    seq: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Per-chat waiters: a change in one chat wakes only its own waiters, so 200 simulated
    # users do not each wake up (and take the lock in turn) on every message to anyone.
    chat_changed: dict[int, asyncio.Condition] = field(default_factory=dict)
    rate_limit: float | None = None
    recent_sends: deque[float] = field(default_factory=deque)
    # Flood control out of the blue, as Telegram sometimes answers: (probability, rng).
    random_429: tuple[float, random.Random] | None = None
    blocked_by: set[int] = field(default_factory=set)
    next_message_id: dict[int, int] = field(default_factory=dict)

    def as_user(self) -> JsonDict:
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    def changed_in(self, chat_id: int) -> asyncio.Condition:
        return self.chat_changed.setdefault(chat_id, asyncio.Condition())

    async def announce(self, chat_id: int, message: JsonDict | None = None) -> None:
        """A message in `chat_id` was sent, edited (`message`, stamped with the new `seq`)
        or deleted: wake that chat's waiters and the bot-wide ones."""
        self.seq += 1
        if message is not None:
            message["_seq"] = self.seq
        for condition in (self.chat_changed.get(chat_id), self.changed):
            if condition is not None:
                async with condition:
                    condition.notify_all()

    def record(self, message: JsonDict) -> None:
        self.sent.append(message)
        self.sent_by_chat.setdefault(message["chat"]["id"], []).append(message)

    def messages_in(self, chat_id: int) -> list[JsonDict]:
        return [m for m in self.sent_by_chat.get(chat_id, ()) if not m.get("_deleted")]

    def find_message(self, chat_id: int, message_id: int) -> JsonDict | None:
        for message in self.sent_by_chat.get(chat_id, ()):
            if message["message_id"] == message_id:
                return None if message.get("_deleted") else message
        return None

    def allocate_message_id(self, chat_id: int) -> int:
        number = self.next_message_id.get(chat_id, 1)
        self.next_message_id[chat_id] = number + 1
        return number


class FakeTelegram:
    """The fake Bot API server. Use as `async with FakeTelegram() as telegram:`."""

    def __init__(self) -> None:
        self.url = ""
        self._bots: dict[str, FakeBot] = {}
        self._calls: list[ApiCall] = []
        self._faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._deliveries: dict[int, asyncio.Task[None]] = {}
        self._wakeups: dict[int, asyncio.Event] = {}
        self._chats: dict[int, JsonDict] = {}
        self._incoming: dict[tuple[int, int, int], JsonDict] = {}
        # file_id -> (the bot it was sent to, file_path, bytes)
        self._files: dict[str, tuple[int, str, bytes]] = {}
        self.downloads: list[str] = []  # file_paths fetched from /file/bot<token>/
        self._closing = False
        # Public host names webhooks are sent to -> the base URL of what stands for them.
        self.hosts: dict[str, str] = {}
        # A public host served by several replicas (the manager in webhook mode): each
        # delivery goes to the next base URL in turn, as a load balancer would send it.
        self.replicas: dict[str, list[str]] = {}
        self._turns: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner, self.url = await serve_on_loopback(app)
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        # Release open long polls at once (the server would otherwise wait them out).
        self._closing = True
        for event in self._wakeups.values():
            event.set()
        for task in self._deliveries.values():
            task.cancel()
        for task in self._deliveries.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- test-facing API -----------------------------------------------------

    def add_bot(
        self,
        *,
        username: str,
        first_name: str | None = None,
        token: str | None = None,
        can_manage_bots: bool = False,
    ) -> FakeBot:
        bot_id = int(token.split(":", 1)[0]) if token else next(_ids)
        bot = FakeBot(
            id=bot_id,
            username=username,
            first_name=first_name or username,
            token=token or make_token(bot_id),
            can_manage_bots=can_manage_bots,
        )
        self._bots[bot.token] = bot
        return bot

    def bot(self, username: str) -> FakeBot:
        for bot in self._bots.values():
            if bot.username == username:
                return bot
        raise KeyError(username)

    def revoke(self, token: str) -> None:
        bot = self._bots.pop(token)
        bot.revoked_tokens.add(token)

    def reissue_token(self, bot: FakeBot) -> str:
        """BotFather's /revoke: the bot's token stops working and a new one is issued;
        the bot (id, webhook, profile) stays the same."""
        self.revoke(bot.token)
        bot.token = make_token(bot.id)
        self._bots[bot.token] = bot
        return bot.token

    def user(
        self,
        bot: FakeBot,
        *,
        user_id: int | None = None,
        first_name: str = "Alice",
        username: str | None = None,
        language_code: str = "en",
    ) -> SimUser:
        from tests.fakes.user import SimUser

        return SimUser(
            self,
            bot,
            user_id=user_id,
            first_name=first_name,
            username=username,
            language_code=language_code,
        )

    def group(self, bot: FakeBot, *, chat_id: int | None = None, title: str = "Group") -> SimGroup:
        from tests.fakes.user import SimGroup

        return SimGroup(self, bot, chat_id=chat_id, title=title)

    def calls(self, method: str | None = None, *, bot: FakeBot | None = None) -> list[ApiCall]:
        return [
            call
            for call in self._calls
            if (method is None or call.method == method) and (bot is None or call.bot is bot)
        ]

    def inject_fault(
        self,
        method: str,
        *,
        status: int | None = 500,
        retry_after: int | None = None,
        delay: float = 0.0,
        times: int = 1,
        bot: FakeBot | None = None,
        description: str | None = None,
        chat_id: int | None = None,
        after: int = 0,
    ) -> None:
        """The next `times` calls of `method` (optionally of one bot, to one chat) fail or
        are delayed, once `after` such calls have gone through. `status=None` only delays.
        A 429 carries `retry_after` like Telegram's.
        """
        self._faults.append(
            Fault(method, status, retry_after, delay, times, bot, description, chat_id, after)
        )

    def set_rate_limit(self, bot: FakeBot, per_second: float = 30.0) -> None:
        bot.rate_limit = per_second

    def block(self, bot: FakeBot, user_id: int) -> None:
        bot.blocked_by.add(user_id)

    def store_file(self, bot: FakeBot, data: bytes, *, kind: str, extension: str) -> JsonDict:
        """A file a user sends to `bot`: its file_id, file_unique_id and file_size."""
        unique = secrets.token_hex(6)
        file_id = f"{kind}-{unique}"
        self._files[file_id] = (bot.id, f"{kind}s/file_{unique}{extension}", data)
        return {"file_id": file_id, "file_unique_id": unique, "file_size": len(data)}

    def register_chat(self, chat: JsonDict) -> None:
        self._chats[chat["id"]] = chat

    async def push_update(self, bot: FakeBot, update: JsonDict) -> None:
        """Queue an update for getUpdates, or deliver it to the bot's webhook."""
        update = {"update_id": bot.next_update_id, **update}
        bot.next_update_id += 1
        bot.pending.append(update)
        self._wake(bot)
        async with bot.changed:
            bot.changed.notify_all()

    # -- HTTP ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        bot = self._bots.get(token)
        params = await _read_params(request)
        call = ApiCall(
            method=method,
            bot=bot,
            params=params,
            at=time.monotonic(),
            content_type=request.content_type,
        )
        self._calls.append(call)
        try:
            if bot is None:
                raise TelegramError(401, "Unauthorized")
            await self._apply_faults(method, bot, params)
            handler = self._methods().get(method.lower())
            if handler is None:
                raise TelegramError(404, "Not Found")
            if method in RATE_LIMITED_METHODS:
                self._check_rate(bot)
            result = await handler(bot, params)
        except TelegramError as error:
            call.status = error.code
            body: JsonDict = {
                "ok": False,
                "error_code": error.code,
                "description": error.description,
            }
            if error.parameters:
                body["parameters"] = error.parameters
            return web.json_response(body, status=error.code)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        bot = self._bots.get(request.match_info["token"])
        path = request.match_info["path"]
        for owner, file_path, data in self._files.values():
            if bot is not None and owner == bot.id and file_path == path:
                self.downloads.append(path)
                return web.Response(body=data, content_type="application/octet-stream")
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _apply_faults(self, method: str, bot: FakeBot, params: JsonDict) -> None:
        for fault in self._faults:
            if fault.times <= 0 or fault.method != method:
                continue
            if fault.bot is not None and fault.bot is not bot:
                continue
            if fault.chat_id is not None and str(params.get("chat_id")) != str(fault.chat_id):
                continue
            if fault.after > 0:
                fault.after -= 1
                continue
            fault.times -= 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is None:
                return
            if fault.status == 429:
                retry_after = fault.retry_after or 1
                raise TelegramError(
                    429,
                    fault.description or f"Too Many Requests: retry after {retry_after}",
                    parameters={"retry_after": retry_after},
                )
            raise TelegramError(fault.status, fault.description or _default_description(fault))
        self._faults = [fault for fault in self._faults if fault.times > 0]

    def set_random_429(self, bot: FakeBot, probability: float, *, seed: int = 0) -> None:
        """Each send fails with 429 (retry_after 1) with this probability, reproducibly."""
        bot.random_429 = (probability, random.Random(seed))

    def _check_rate(self, bot: FakeBot) -> None:
        if bot.random_429 is not None:
            probability, rng = bot.random_429
            if rng.random() < probability:
                raise TelegramError(
                    429, "Too Many Requests: retry after 1", parameters={"retry_after": 1}
                )
        if bot.rate_limit is None:
            return
        now = time.monotonic()
        window = bot.recent_sends
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= bot.rate_limit:
            raise TelegramError(
                429, "Too Many Requests: retry after 1", parameters={"retry_after": 1}
            )
        window.append(now)

    def _methods(self) -> dict[str, Callable[[FakeBot, JsonDict], Any]]:
        return {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "sendmessage": self._send_message,
            "sendphoto": self._send_photo,
            "getfile": self._get_file,
            "senddocument": self._send_document,
            "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_reply_markup,
            "answercallbackquery": self._answer_callback_query,
            "deletemessage": self._delete_message,
            "sendchataction": self._send_chat_action,
            "sendmessagedraft": self._send_message_draft,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "setmydescription": self._set_my_description,
            "getmydescription": self._get_my_description,
            "setmyshortdescription": self._set_my_short_description,
            "getmyshortdescription": self._get_my_short_description,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "getmanagedbottoken": self._get_managed_bot_token,
            "replacemanagedbottoken": self._replace_managed_bot_token,
            "setmanagedbotaccesssettings": self._set_managed_bot_access_settings,
            "getmanagedbotaccesssettings": self._get_managed_bot_access_settings,
        }

    # -- methods -----------------------------------------------------------------

    async def _get_me(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        return {
            **bot.as_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_manage_bots": bot.can_manage_bots,
        }

    async def _get_updates(self, bot: FakeBot, params: JsonDict) -> list[JsonDict]:
        if bot.webhook is not None:
            raise TelegramError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = max(1, min(100, int(params.get("limit") or 100)))
        timeout = max(0.0, float(params.get("timeout") or 0))
        allowed = params.get("allowed_updates")
        if offset:
            # A positive offset confirms every update before it (Telegram forgets them).
            while bot.pending and bot.pending[0]["update_id"] < offset:
                bot.pending.popleft()
        deadline = time.monotonic() + timeout
        while True:
            ready = [u for u in bot.pending if _allowed(u, allowed)][:limit]
            remaining = deadline - time.monotonic()
            if ready or remaining <= 0 or self._closing:
                return ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup(bot).wait(), remaining)
            self._wakeup(bot).clear()

    async def _send_message(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        chat_id = self._chat_id(bot, params)
        text = _render_text(params.get("text"), params.get("parse_mode"), limit=MAX_TEXT)
        markup = _check_reply_markup(params.get("reply_markup"))
        return await self._record_message(bot, chat_id, {"text": text}, markup, params)

    async def _get_file(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        stored = self._files.get(str(params.get("file_id", "")))
        if stored is None or stored[0] != bot.id:
            raise bad_request("invalid file_id")
        _, file_path, data = stored
        if len(data) > MAX_DOWNLOAD:
            raise bad_request("file is too big")
        return {
            "file_id": params["file_id"],
            "file_unique_id": params["file_id"].split("-", 1)[-1],
            "file_size": len(data),
            "file_path": file_path,
        }

    async def _send_photo(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        chat_id = self._chat_id(bot, params)
        content = _media_content(params, "photo")
        if "caption" in params:
            content["caption"] = _render_text(
                params["caption"], params.get("parse_mode"), limit=MAX_CAPTION, allow_empty=True
            )
        photo = {"file_id": content.pop("file_id"), "file_unique_id": "u", "width": 1, "height": 1}
        content["photo"] = [{**photo, "file_size": content.pop("size", 0)}]
        markup = _check_reply_markup(params.get("reply_markup"))
        return await self._record_message(bot, chat_id, content, markup, params)

    async def _send_document(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        chat_id = self._chat_id(bot, params)
        content = _media_content(params, "document")
        if "caption" in params:
            content["caption"] = _render_text(
                params["caption"], params.get("parse_mode"), limit=MAX_CAPTION, allow_empty=True
            )
        content["document"] = {
            "file_id": content.pop("file_id"),
            "file_unique_id": "u",
            "file_name": content.pop("file_name", "document"),
            "file_size": content.pop("size", 0),
        }
        raw = content.pop("_bytes", None)
        message = await self._record_message(bot, chat_id, content, None, params)
        if raw is not None:
            bot.sent[-1]["_document_bytes"] = raw
        return message

    async def _record_message(
        self,
        bot: FakeBot,
        chat_id: int,
        content: JsonDict,
        markup: JsonDict | None,
        params: JsonDict,
    ) -> JsonDict:
        message: JsonDict = {
            "message_id": bot.allocate_message_id(chat_id),
            "date": int(time.time()),
            "chat": self._chats.get(chat_id, {"id": chat_id, "type": "private"}),
            "from": bot.as_user(),
            **content,
        }
        if markup is not None and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        elif markup is not None:
            # Reply keyboards (and their removal) are not part of the returned Message.
            message["_reply_keyboard"] = markup
        if params.get("parse_mode"):
            message["_parse_mode"] = params["parse_mode"]
        bot.record(message)
        await self._touch(bot, message)
        return _public(message)

    async def _edit_message_text(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        message = self._editable(bot, params)
        text = _render_text(params.get("text"), params.get("parse_mode"), limit=MAX_TEXT)
        markup = _check_reply_markup(params.get("reply_markup"))
        if message.get("text") == text and message.get("reply_markup") == markup:
            raise bad_request(
                "message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message"
            )
        message["text"] = text
        if markup is not None:
            message["reply_markup"] = markup
        else:
            message.pop("reply_markup", None)
        message["edit_date"] = int(time.time())
        await self._touch(bot, message)
        return _public(message)

    async def _edit_reply_markup(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        message = self._editable(bot, params)
        markup = _check_reply_markup(params.get("reply_markup"))
        if message.get("reply_markup") == markup:
            raise bad_request(
                "message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message"
            )
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        await self._touch(bot, message)
        return _public(message)

    def _editable(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        chat_id = self._chat_id(bot, params)
        message = bot.find_message(chat_id, int(params.get("message_id") or 0))
        if message is None:
            raise bad_request("message to edit not found")
        return message

    async def _answer_callback_query(self, bot: FakeBot, params: JsonDict) -> bool:
        if not params.get("callback_query_id"):
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        bot.callback_answers.append(params)
        async with bot.changed:
            bot.changed.notify_all()
        return True

    async def _delete_message(self, bot: FakeBot, params: JsonDict) -> bool:
        chat_id = int(params.get("chat_id") or 0)
        message_id = int(params.get("message_id") or 0)
        target = bot.find_message(chat_id, message_id)
        incoming = self._incoming.get((bot.id, chat_id, message_id))
        if target is None and incoming is None:
            raise bad_request("message to delete not found")
        for message in (target, incoming):
            if message is not None:
                message["_deleted"] = True
        bot.deleted.append((chat_id, message_id))
        await bot.announce(chat_id)
        return True

    async def _send_chat_action(self, bot: FakeBot, params: JsonDict) -> bool:
        chat_id = self._chat_id(bot, params)
        bot.chat_actions.append({"chat_id": chat_id, "action": params.get("action")})
        return True

    async def _send_message_draft(self, bot: FakeBot, params: JsonDict) -> bool:
        chat_id = self._chat_id(bot, params)
        if not params.get("draft_id"):
            raise bad_request("invalid draft identifier specified")
        text = _render_text(params.get("text"), params.get("parse_mode"), limit=MAX_TEXT)
        bot.drafts.append({"chat_id": chat_id, "draft_id": params["draft_id"], "text": text})
        return True

    async def _set_my_commands(self, bot: FakeBot, params: JsonDict) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands must be a list of at most 100 commands")
        for command in commands:
            name = str(command.get("command", ""))
            if not (1 <= len(name) <= 32) or not all(
                c.islower() or c.isdigit() or c == "_" for c in name
            ):
                raise bad_request("BOT_COMMAND_INVALID")
            if not (1 <= len(str(command.get("description", ""))) <= 256):
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        bot.commands[_scope_key(params)] = commands
        return True

    async def _get_my_commands(self, bot: FakeBot, params: JsonDict) -> list[JsonDict]:
        return bot.commands.get(_scope_key(params), [])

    async def _delete_my_commands(self, bot: FakeBot, params: JsonDict) -> bool:
        bot.commands.pop(_scope_key(params), None)
        return True

    async def _set_my_description(self, bot: FakeBot, params: JsonDict) -> bool:
        text = str(params.get("description") or "")
        if len(text) > MAX_DESCRIPTION:
            raise bad_request("description is too long")
        _set_by_language(bot.descriptions, params, text)
        return True

    async def _get_my_description(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        return {"description": _by_language(bot.descriptions, params)}

    async def _set_my_short_description(self, bot: FakeBot, params: JsonDict) -> bool:
        text = str(params.get("short_description") or "")
        if len(text) > MAX_SHORT_DESCRIPTION:
            raise bad_request("short description is too long")
        _set_by_language(bot.short_descriptions, params, text)
        return True

    async def _get_my_short_description(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        return {"short_description": _by_language(bot.short_descriptions, params)}

    async def _set_webhook(self, bot: FakeBot, params: JsonDict) -> bool:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(bot, params)
        if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None:
            secret = str(secret)
            if not (1 <= len(secret) <= 256) or not set(secret) <= SECRET_TOKEN_CHARS:
                raise bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            bot.pending.clear()
        allowed = params.get("allowed_updates")
        bot.webhook = WebhookState(
            url=url,
            secret_token=secret,
            allowed_updates=allowed if isinstance(allowed, list) else None,
            max_connections=int(params.get("max_connections") or 40),
        )
        self._ensure_delivery(bot)
        return True

    async def _delete_webhook(self, bot: FakeBot, params: JsonDict) -> bool:
        bot.webhook = None
        if params.get("drop_pending_updates"):
            bot.pending.clear()
        task = self._deliveries.pop(bot.id, None)
        if task is not None:
            task.cancel()
        return True

    async def _get_webhook_info(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        hook = bot.webhook
        if hook is None:
            return {
                "url": "",
                "has_custom_certificate": False,
                "pending_update_count": len(bot.pending),
            }
        info: JsonDict = {
            "url": hook.url,
            "has_custom_certificate": False,
            "pending_update_count": len(bot.pending),
            "max_connections": hook.max_connections,
        }
        if hook.allowed_updates is not None:
            info["allowed_updates"] = hook.allowed_updates
        if hook.last_error_date is not None:
            info["last_error_date"] = hook.last_error_date
            info["last_error_message"] = hook.last_error_message
        return info

    async def _get_managed_bot_token(self, bot: FakeBot, params: JsonDict) -> str:
        return self._managed_by(bot, params).token

    async def _replace_managed_bot_token(self, bot: FakeBot, params: JsonDict) -> str:
        managed = self._managed_by(bot, params)
        self._bots.pop(managed.token, None)
        managed.revoked_tokens.add(managed.token)
        managed.token = make_token(managed.id)
        self._bots[managed.token] = managed
        return managed.token

    async def _set_managed_bot_access_settings(self, bot: FakeBot, params: JsonDict) -> bool:
        managed = self._managed_by(bot, params)
        restricted = params.get("is_access_restricted")
        if not isinstance(restricted, bool):
            raise bad_request("is_access_restricted must be a boolean")
        added = params.get("added_user_ids") or []
        if not isinstance(added, list) or not all(isinstance(i, int) for i in added):
            raise bad_request("can't parse added_user_ids JSON array")
        if len(added) > MAX_ADDED_USERS:
            raise bad_request("too many users specified")
        managed.access_restricted = restricted
        # "Ignored if is_access_restricted is False"
        managed.access_user_ids = list(dict.fromkeys(added)) if restricted else []
        return True

    async def _get_managed_bot_access_settings(self, bot: FakeBot, params: JsonDict) -> JsonDict:
        managed = self._managed_by(bot, params)
        settings: JsonDict = {"is_access_restricted": managed.access_restricted}
        if managed.access_restricted:
            settings["added_users"] = [self._user(user_id) for user_id in managed.access_user_ids]
        return settings

    def _user(self, user_id: int) -> JsonDict:
        """A User object for an id: what the fake knows of it from its private chat."""
        chat = self._chats.get(user_id, {})
        user: JsonDict = {
            "id": user_id,
            "is_bot": False,
            "first_name": chat.get("first_name", "User"),
        }
        if chat.get("username"):
            user["username"] = chat["username"]
        return user

    def _managed_by(self, bot: FakeBot, params: JsonDict) -> FakeBot:
        user_id = int(params.get("user_id") or 0)
        for candidate in self._bots.values():
            if candidate.id == user_id and candidate.manager is bot:
                return candidate
        raise bad_request("bot not found or not managed by this bot")

    # -- helpers -----------------------------------------------------------------

    def _chat_id(self, bot: FakeBot, params: JsonDict) -> int:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise bad_request("chat_id is empty")
        try:
            chat_id = int(raw)
        except (TypeError, ValueError):
            raise bad_request("chat not found") from None
        if chat_id in bot.blocked_by:
            raise TelegramError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    async def _touch(self, bot: FakeBot, message: JsonDict) -> None:
        await bot.announce(message["chat"]["id"], message)

    def _wakeup(self, bot: FakeBot) -> asyncio.Event:
        return self._wakeups.setdefault(bot.id, asyncio.Event())

    def _wake(self, bot: FakeBot) -> None:
        self._wakeup(bot).set()

    def remember_incoming(self, bot: FakeBot, message: JsonDict) -> None:
        """Messages users sent, so the bot may delete them (e.g. a pasted token)."""
        self._incoming[(bot.id, message["chat"]["id"], message["message_id"])] = message

    def _ensure_delivery(self, bot: FakeBot) -> None:
        task = self._deliveries.get(bot.id)
        if task is None or task.done():
            self._deliveries[bot.id] = asyncio.create_task(self._deliver(bot))
        self._wake(bot)

    async def _deliver(self, bot: FakeBot) -> None:
        """Push pending updates to the webhook in order, retrying like Telegram does."""
        assert self._client is not None
        backoff = 0.05
        # `_closing` too: Python 3.11's wait_for can swallow a cancellation.
        while bot.webhook is not None and not self._closing:
            hook = bot.webhook
            if not bot.pending:
                self._wakeup(bot).clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup(bot).wait(), 1.0)
                continue
            update = bot.pending[0]
            if not _allowed(update, hook.allowed_updates):
                bot.pending.popleft()
                continue
            headers = {"Content-Type": "application/json"}
            if hook.secret_token:
                headers["X-Telegram-Bot-Api-Secret-Token"] = hook.secret_token
            error = await self._post_update(hook.url, update, headers)
            if bot.webhook is not hook:
                continue
            if error is None:
                if bot.pending and bot.pending[0] is update:
                    bot.pending.popleft()
                hook.delivered += 1
                backoff = 0.05
                continue
            hook.last_error_date = int(time.time())
            hook.last_error_message = error
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _post_update(self, url: str, update: JsonDict, headers: dict[str, str]) -> str | None:
        assert self._client is not None
        parts = urlsplit(url)
        host = parts.hostname or ""
        base = self.hosts.get(host)
        bases = self.replicas.get(host)
        if bases:
            turn = self._turns.get(host, 0)
            self._turns[host] = turn + 1
            base = bases[turn % len(bases)]
        if base is not None:  # a public name the test's ingress stands for (TLS ends there)
            headers = {**headers, "Host": parts.netloc}
            url = f"{base}{parts.path}" + (f"?{parts.query}" if parts.query else "")
        elif host not in ("127.0.0.1", "localhost"):
            # Tests never reach the internet: fail like Telegram does for an unknown host.
            return "Failed to resolve host: Name or service not known"
        try:
            async with self._client.post(url, data=json.dumps(update), headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"Wrong response from the webhook: {response.status} {response.reason}"
        except aiohttp.ClientConnectorError:
            return "Connection refused"
        except TimeoutError:
            return "Read timeout expired"
        except aiohttp.ClientError as error:
            return f"Connection error: {type(error).__name__}"


# -- decoding and validation ---------------------------------------------------


async def _read_params(request: web.Request) -> JsonDict:
    params: JsonDict = dict(request.query)
    if request.method == "GET" or not request.can_read_body:
        return {key: _decode(key, value) for key, value in params.items()}
    content_type = request.content_type
    if content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
        return params
    if content_type.startswith("multipart/"):
        reader = await request.multipart()
        files: dict[str, tuple[str, bytes]] = {}
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                continue
            payload = await part.read()
            if part.filename:
                files[part.name] = (part.filename, bytes(payload))
            else:
                params[part.name] = _decode(part.name, payload.decode())
        params["_files"] = files
        return params
    form = await request.post()
    for key, value in form.items():
        params[key] = _decode(key, value if isinstance(value, str) else value.file.read())
    return params


def _decode(name: str, value: Any) -> Any:
    """Strings stay raw; everything else arrives JSON-encoded from aiogram."""
    if name in STRING_FIELDS or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _default_description(fault: Fault) -> str:
    return {
        400: "Bad Request: injected",
        401: "Unauthorized",
        403: "Forbidden: bot was blocked by the user",
        404: "Not Found",
        409: "Conflict: terminated by other getUpdates request",
        500: "Internal Server Error",
        502: "Bad Gateway",
    }.get(fault.status or 500, "Internal Server Error")


def _render_text(raw: Any, parse_mode: Any, *, limit: int, allow_empty: bool = False) -> str:
    text = "" if raw is None else str(raw)
    plain = text
    if parse_mode:
        try:
            plain = check_markup(text, str(parse_mode))
        except MarkupError as error:
            raise bad_request(f"can't parse entities: {error}") from None
    if not plain.strip() and not allow_empty:
        raise bad_request("message text is empty")
    if len(plain) > limit:
        raise bad_request(
            "message is too long" if limit == MAX_TEXT else "message caption is too long"
        )
    # Telegram answers with the text as the user sees it (markup turned into entities).
    return plain


def _check_reply_markup(markup: Any) -> JsonDict | None:
    if markup is None or markup == "":
        return None
    if not isinstance(markup, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if not str(button.get("text", "")):
                raise bad_request("BUTTON_TEXT_INVALID")
            if "callback_data" in button:
                size = len(str(button["callback_data"]).encode())
                if not 1 <= size <= 64:
                    raise bad_request("BUTTON_DATA_INVALID")
    return markup


def _media_content(params: JsonDict, field_name: str) -> JsonDict:
    value = params.get(field_name)
    files: dict[str, tuple[str, bytes]] = params.get("_files", {})
    if isinstance(value, str) and value.startswith("attach://"):
        value = value.removeprefix("attach://")
    if isinstance(value, str) and value in files:
        filename, data = files[value]
        return {
            "file_id": f"file-{secrets.token_hex(6)}",
            "file_name": filename,
            "size": len(data),
            "_bytes": data,
        }
    if field_name in files:
        filename, data = files[field_name]
        return {
            "file_id": f"file-{secrets.token_hex(6)}",
            "file_name": filename,
            "size": len(data),
            "_bytes": data,
        }
    if isinstance(value, str) and value:
        return {"file_id": value}
    raise bad_request(f"there is no {field_name} in the request")


def _allowed(update: JsonDict, allowed: Any) -> bool:
    if not allowed:
        # Telegram's default: everything but chat_member, message_reaction(_count).
        return not any(key in update for key in ("chat_member", "message_reaction"))
    return any(key in update for key in allowed)


def _scope_key(params: JsonDict) -> str:
    scope = params.get("scope") or {"type": "default"}
    language = params.get("language_code") or ""
    return json.dumps(scope, sort_keys=True) + language


def _set_by_language(texts: dict[str, str], params: JsonDict, text: str) -> None:
    """An empty text removes the dedicated text of that language, as Telegram does."""
    language = str(params.get("language_code") or "")
    if text:
        texts[language] = text
    else:
        texts.pop(language, None)


def _by_language(texts: dict[str, str], params: JsonDict) -> str:
    """The language's own text, else the default one, else empty."""
    language = str(params.get("language_code") or "")
    return texts.get(language, texts.get("", ""))


def _public(message: JsonDict) -> JsonDict:
    """The message as the Bot API returns it (without the fake's bookkeeping)."""
    return {key: value for key, value in message.items() if not key.startswith("_")}


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    """A started fake Bot API server; stopped after the test."""
    async with FakeTelegram() as fake:
        yield fake


from tests.fakes.user import SimGroup, SimUser  # noqa: E402  (cycle: user.py types these)

__all__ = ["ApiCall", "FakeBot", "FakeTelegram", "SimGroup", "SimUser", "telegram"]
