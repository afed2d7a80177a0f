"""Simulated Telegram users on top of the fake Bot API server.

A test speaks the user's language: `await user.send("/deploy")`,
`await user.press("Deploy")`, `await user.wait_for(text_contains="live")`.
Waits are bounded and event-driven (no sleeps); a wait that times out fails
with the last messages the user saw, which is usually the whole diagnosis.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.telegram_api import FakeBot, FakeTelegram

JsonDict = dict[str, Any]
_user_ids = itertools.count(100_001)
_group_ids = itertools.count(1_000_001)
_MENTION = re.compile(r"@[A-Za-z0-9_]{3,32}")
_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]+)?")


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _entities(text: str) -> list[JsonDict]:
    """Entities as Telegram computes them (offsets in UTF-16 code units)."""
    found: list[JsonDict] = []
    command = _COMMAND.match(text)
    if command:
        found.append({"type": "bot_command", "offset": 0, "length": _utf16_len(command.group())})
    for mention in _MENTION.finditer(text):
        if command and mention.start() < command.end():
            continue
        found.append(
            {
                "type": "mention",
                "offset": _utf16_len(text[: mention.start()]),
                "length": _utf16_len(mention.group()),
            }
        )
    return found


def _visible_text(message: JsonDict) -> str:
    return str(message.get("text") or message.get("caption") or "")


class _ChatParticipant:
    """What users and groups share: sending into one chat of one bot, and watching it."""

    def __init__(self, telegram: FakeTelegram, bot: FakeBot, chat: JsonDict) -> None:
        self.telegram = telegram
        self.bot = bot
        self.chat = chat
        self.chat_id: int = chat["id"]
        self._mark = bot.seq
        telegram.register_chat(chat)

    async def _push_message(self, sender: JsonDict, content: JsonDict) -> JsonDict:
        message: JsonDict = {
            "message_id": self.bot.allocate_message_id(self.chat_id),
            "date": int(time.time()),
            "chat": self.chat,
            "from": sender,
            **content,
        }
        self.telegram.remember_incoming(self.bot, message)
        self._mark = self.bot.seq
        await self.telegram.push_update(self.bot, {"message": message})
        return message

    def messages(self) -> list[JsonDict]:
        """Every message the bot sent to this chat, in order, as it looks now."""
        return [_strip(m) for m in self.bot.messages_in(self.chat_id)]

    def last_message(self) -> JsonDict | None:
        messages = self.bot.messages_in(self.chat_id)
        return _strip(messages[-1]) if messages else None

    def drafts(self) -> list[JsonDict]:
        return [d for d in self.bot.drafts if d["chat_id"] == self.chat_id]

    def chat_actions(self) -> list[str]:
        return [a["action"] for a in self.bot.chat_actions if a["chat_id"] == self.chat_id]

    async def wait_for(
        self,
        *,
        text_contains: str | None = None,
        predicate: Callable[[JsonDict], bool] | None = None,
        timeout: float = 5.0,
        after: int | None = None,
    ) -> JsonDict:
        """The first bot message sent or edited since this chat's last action that matches."""
        since = self._mark if after is None else after

        def match() -> JsonDict | None:
            for message in self.bot.messages_in(self.chat_id):
                if message.get("_seq", 0) <= since:
                    continue
                if text_contains is not None and text_contains not in _visible_text(message):
                    continue
                if predicate is not None and not predicate(_strip(message)):
                    continue
                return message
            return None

        changed = self.bot.changed_in(self.chat_id)
        try:
            async with changed:
                found = await asyncio.wait_for(changed.wait_for(match), timeout)
        except TimeoutError:
            seen = [_visible_text(m)[:200] for m in self.bot.messages_in(self.chat_id)[-5:]]
            raise AssertionError(
                f"no message matching text_contains={text_contains!r} within {timeout}s; "
                f"last messages: {seen}"
            ) from None
        return _strip(found)

    async def wait_for_silence_since_mark(self) -> list[JsonDict]:
        """Messages sent since the last action (no waiting): for 'nothing was said' checks."""
        return [
            _strip(m) for m in self.bot.messages_in(self.chat_id) if m.get("_seq", 0) > self._mark
        ]


class SimUser(_ChatParticipant):
    """A person in a private chat with `bot`."""

    def __init__(
        self,
        telegram: FakeTelegram,
        bot: FakeBot,
        *,
        user_id: int | None = None,
        first_name: str = "Alice",
        username: str | None = None,
        language_code: str = "en",
    ) -> None:
        self.id = user_id if user_id is not None else next(_user_ids)
        self.first_name = first_name
        self.language_code = language_code  # what their Telegram app speaks
        self.username = username or f"{first_name.lower()}{self.id}"
        chat = {
            "id": self.id,
            "type": "private",
            "first_name": first_name,
            "username": self.username,
        }
        super().__init__(telegram, bot, chat)

    def as_user(self) -> JsonDict:
        return {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
            "username": self.username,
            "language_code": self.language_code,
        }

    async def send(self, text: str, *, entities: list[JsonDict] | None = None) -> JsonDict:
        """A text message; `entities` adds formatting (bold, italic...) as Telegram sends it."""
        content: JsonDict = {"text": text}
        entities = _entities(text) + (entities or [])
        if entities:
            content["entities"] = entities
        return await self._push_message(self.as_user(), content)

    async def forward(
        self, text: str, *, author: SimUser | None = None, hidden_name: str | None = None
    ) -> JsonDict:
        """A message `author` wrote, forwarded here; without an author, from someone who
        hides their account in forwards (Telegram gives only their name)."""
        origin: JsonDict = {"date": int(time.time()) - 60}
        if author is not None:
            origin.update(type="user", sender_user=author.as_user())
        else:
            origin.update(type="hidden_user", sender_user_name=hidden_name or "Someone")
        return await self._push_message(self.as_user(), {"text": text, "forward_origin": origin})

    async def send_photo(
        self, caption: str | None = None, *, data: bytes | None = None,
        thumbnail: bytes | None = None,
    ) -> JsonDict:  # fmt: skip
        """A photo; with `data` its bytes can be downloaded (getFile), and a `thumbnail`
        size comes first in the list, as Telegram lists the sizes smallest first."""
        if data is None:
            photo = [
                {
                    "file_id": f"photo-{uuid.uuid4().hex[:8]}",
                    "file_unique_id": "p",
                    "width": 90,
                    "height": 90,
                }
            ]
        else:
            photo = []
            if thumbnail is not None:
                small = self.telegram.store_file(
                    self.bot, thumbnail, kind="photo", extension=".jpg"
                )
                photo.append({**small, "width": 90, "height": 90})
            large = self.telegram.store_file(self.bot, data, kind="photo", extension=".jpg")
            photo.append({**large, "width": 1280, "height": 960})
        content: JsonDict = {"photo": photo}
        if caption is not None:
            content["caption"] = caption
        return await self._push_message(self.as_user(), content)

    async def send_sticker(self) -> JsonDict:
        sticker = {
            "file_id": f"sticker-{uuid.uuid4().hex[:8]}",
            "file_unique_id": "s",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
        }
        return await self._push_message(self.as_user(), {"sticker": sticker})

    async def send_voice(self, *, data: bytes | None = None, duration: int = 3) -> JsonDict:
        """A voice note (OGG/Opus); with `data` its bytes can be downloaded (getFile)."""
        if data is None:
            voice = {"file_id": f"voice-{uuid.uuid4().hex[:8]}", "file_unique_id": "v"}
        else:
            voice = self.telegram.store_file(self.bot, data, kind="voice", extension=".oga")
        voice.update(duration=duration, mime_type="audio/ogg")
        return await self._push_message(self.as_user(), {"voice": voice})

    async def send_document(
        self, file_name: str = "notes.txt", *, data: bytes | None = None,
        mime_type: str | None = None, caption: str | None = None,
    ) -> JsonDict:  # fmt: skip
        """A file; with `data` its bytes can be downloaded (getFile)."""
        if data is None:
            document: JsonDict = {
                "file_id": f"doc-{uuid.uuid4().hex[:8]}",
                "file_unique_id": "d",
            }
        else:
            extension = "." + file_name.rsplit(".", 1)[-1] if "." in file_name else ""
            document = self.telegram.store_file(
                self.bot, data, kind="document", extension=extension
            )
        document["file_name"] = file_name
        if mime_type is not None:
            document["mime_type"] = mime_type
        content: JsonDict = {"document": document}
        if caption is not None:
            content["caption"] = caption
        return await self._push_message(self.as_user(), content)

    async def press(self, text: str, *, timeout: float = 5.0) -> None:
        """Press a button by its text, waiting (bounded) for it to be shown.

        The newest inline button that matches wins, else the current reply keyboard's.
        """
        found: tuple[JsonDict | None, JsonDict] | None = None

        def locate() -> bool:
            nonlocal found
            for message in reversed(self.bot.messages_in(self.chat_id)):
                rows = (message.get("reply_markup") or {}).get("inline_keyboard")
                button = _find(rows or [], text)
                if button is not None:
                    found = (message, button)
                    return True
            button = _find(self.reply_keyboard(), text)
            if button is not None:
                found = (None, button)
                return True
            return False

        changed = self.bot.changed_in(self.chat_id)
        try:
            async with changed:
                await asyncio.wait_for(changed.wait_for(locate), timeout)
        except TimeoutError:
            messages = self.bot.messages_in(self.chat_id)
            labels = [
                b.get("text")
                for m in messages[-3:]
                for row in (m.get("reply_markup") or {}).get("inline_keyboard", [])
                for b in row
            ] + [b.get("text") for row in self.reply_keyboard() for b in row if isinstance(b, dict)]
            raise AssertionError(f"no button {text!r}; buttons shown lately: {labels}") from None
        assert found is not None
        message, button = found
        if message is None:
            await self.send(str(button["text"]))
        else:
            await self._press_inline(message, button)

    def reply_keyboard(self) -> list[list[Any]]:
        """The reply keyboard the user sees now (the last one sent, unless removed)."""
        for message in reversed(self.bot.messages_in(self.chat_id)):
            markup = message.get("_reply_keyboard")
            if markup is None:
                continue
            keyboard: list[list[Any]] = markup.get("keyboard", [])
            return keyboard
        return []

    async def _press_inline(self, message: JsonDict, button: JsonDict) -> None:
        if "callback_data" not in button:
            raise AssertionError(f"button {button.get('text')!r} is not a callback button")
        self._mark = self.bot.seq
        query = {
            "id": uuid.uuid4().hex,
            "from": self.as_user(),
            "message": _strip(message),
            "chat_instance": str(self.chat_id),
            "data": button["callback_data"],
        }
        await self.telegram.push_update(self.bot, {"callback_query": query})

    async def press_callback(self, message: JsonDict, data: str) -> None:
        """Send arbitrary (possibly forged) callback data as if a button carried it."""
        await self._press_inline(message, {"text": "forged", "callback_data": data})

    async def create_managed_bot(self, *, username: str, name: str | None = None) -> FakeBot:
        """Tap the manager's request_managed_bot button and confirm in Telegram's dialog."""
        self._managed_bot_request()  # the manager must have offered the button
        managed = self.telegram.add_bot(username=username, first_name=name or username)
        managed.manager = self.bot
        self._mark = self.bot.seq
        bot_user = managed.as_user()
        await self.telegram.push_update(
            self.bot, {"managed_bot": {"user": self.as_user(), "bot_user": bot_user}}
        )
        await self._push_message(
            self.as_user(),
            {"managed_bot_created": {"bot_user": bot_user}},
        )
        return managed

    def _managed_bot_request(self) -> JsonDict:
        for row in self.reply_keyboard():
            for button in row:
                if isinstance(button, dict) and "request_managed_bot" in button:
                    request: JsonDict = button["request_managed_bot"]
                    return request
        raise AssertionError("the bot offered no request_managed_bot button in this chat")

    def callback_answers(self) -> list[JsonDict]:
        return list(self.bot.callback_answers)

    async def wait_for_answer(self, *, text_contains: str = "", timeout: float = 5.0) -> JsonDict:
        """The bot's answerCallbackQuery (toast or alert) containing `text_contains`."""

        def match() -> JsonDict | None:
            for answer in self.bot.callback_answers:
                if text_contains in str(answer.get("text") or ""):
                    return answer
            return None

        try:
            async with self.bot.changed:
                return await asyncio.wait_for(self.bot.changed.wait_for(match), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no callback answer containing {text_contains!r} within {timeout}s; "
                f"answers: {[a.get('text') for a in self.bot.callback_answers]}"
            ) from None

    def deleted_own_messages(self) -> list[int]:
        return [mid for chat, mid in self.bot.deleted if chat == self.chat_id]


class SimGroup(_ChatParticipant):
    """A group chat in which several users talk to (or past) the bot."""

    def __init__(
        self,
        telegram: FakeTelegram,
        bot: FakeBot,
        *,
        chat_id: int | None = None,
        title: str = "Group",
    ) -> None:
        chat = {
            "id": chat_id if chat_id is not None else -next(_group_ids),
            "type": "group",
            "title": title,
        }
        super().__init__(telegram, bot, chat)

    async def send(
        self,
        text: str,
        *,
        from_user_id: int = 555_001,
        first_name: str = "Bob",
        reply_to: JsonDict | None = None,
    ) -> JsonDict:
        sender = {"id": from_user_id, "is_bot": False, "first_name": first_name}
        content: JsonDict = {"text": text}
        entities = _entities(text)
        if entities:
            content["entities"] = entities
        if reply_to is not None:
            content["reply_to_message"] = reply_to
        return await self._push_message(sender, content)


def _find(rows: list[list[Any]], text: str) -> JsonDict | None:
    """The button labelled `text`, else the one button whose label contains it."""
    buttons = [b if isinstance(b, dict) else {"text": b} for row in rows for b in row]
    exact = [b for b in buttons if b.get("text") == text]
    if exact:
        return exact[0]
    partial = [b for b in buttons if text in str(b.get("text", ""))]
    return partial[0] if len(partial) == 1 else None


def _strip(message: JsonDict) -> JsonDict:
    return {key: value for key, value in message.items() if not key.startswith("_")}
