"""The conversation: what an agent does with each update.

Updates of one chat are handled in order by that chat's worker; different
chats run concurrently. Each chat keeps a bounded history (runtime/memory.py:
in the process, and kept by the gateway when MEMORY_URL is set). While the LLM works the chat shows
"typing"; private chats see the reply grow as a draft, then get a real
message. Whatever fails, the user gets an answer.

Photos and image documents go to the model as inline image parts (when it can
see: LLM_VISION); history keeps only their caption, marked `[image]`. Voice
notes and audio are transcribed first; the transcript is answered, and kept in
history, as if the user had typed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.commands import HELP, RESET, START
from runtime.llm import Llm, LlmError, Usage
from runtime.media import (
    MAX_SOUND_BYTES,
    Image,
    MediaPolicy,
    MediaRefused,
    Sound,
    image_in,
    image_part,
    sound_in,
)
from runtime.memory import Memory
from runtime.metrics import Metrics
from runtime.tasks import cancel_and_wait
from runtime.telegram import BotApi, FileTooLarge, TelegramApiError
from runtime.tools import Toolbox

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

MAX_MESSAGE = 4096
SEEN_UPDATES = 10_000
DRAFT_INTERVAL = 0.5
TYPING_INTERVAL = 4.0
# An answer faster than this needs neither "typing" nor a draft: skipping them
# saves two Bot API calls per quick reply, which is most of an agent's own cost.
FEEDBACK_DELAY = 0.3

TEXTS = {
    "start": "Hi! I'm {name}. Send me a message and I'll answer.",
    "help": (
        "Just write to me and I'll answer.\n"
        "/reset — forget our conversation so far\n"
        "/help — this message"
    ),
    "reset": "Done — I've forgotten our conversation. Let's start fresh.",
    "text_only": "Sorry, I can only read text, photos and voice messages.",
    "no_vision": "I can't see images: my AI model reads text only. "
    "Please describe the picture in words.",
    "image_too_big": "This image is too large for me (over {megabytes} MB). "
    "Please send a smaller one.",
    "image_type": "I can read JPEG, PNG, WebP and GIF images only.",
    "voice_too_long": "This recording is too long for me (over {seconds} seconds). "
    "Please send a shorter one.",
    "no_voice": "I can't listen to voice messages yet. Please write to me instead.",
    "no_words": "I couldn't make out any words in that recording.",
    "download": "I couldn't fetch that file from Telegram. Please try sending it again.",
    "not_allowed": "Sorry, this bot is private and only answers its owner's chosen users.",
    "auth": "I can't reach my AI model right now: its API key was rejected. "
    "My owner has been told and needs to update it.",
    "rate_limit": "I'm getting too many requests right now. Please try again in a minute.",
    "budget": "This bot has reached its daily limit; it resets at 00:00 UTC.",
    "user_rate": "You're writing faster than I can think. Please wait a minute and try again.",
    "disabled": "This bot is paused by its owner right now. Please try again later.",
    "other": "Sorry, something went wrong while I was thinking. Please try again.",
    "empty": "I have no answer to that, sorry.",
}


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """Split at paragraph, then line, then sentence, then word boundaries; never above `limit`."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for separator in ("\n\n", "\n", ". ", "! ", "? ", " "):
            index = window.rfind(separator)
            if index > limit // 4:
                cut = index + len(separator)
                break
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


@dataclass(frozen=True)
class Identity:
    id: int
    username: str
    first_name: str


class Conversations:
    """Accepts updates (deduplicated), runs one ordered worker per chat."""

    # The agent's MCP tools (runtime/tools.py), set by the Runtime when it has servers.
    tools: Toolbox | None = None

    def __init__(
        self,
        *,
        api: BotApi,
        llm: Llm,
        metrics: Metrics,
        system_prompt: str,
        history_limit: int,
        memory: Memory | None = None,
        allowed_user_ids: frozenset[int] = frozenset(),
        media: MediaPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._llm = llm
        self._metrics = metrics
        self._system_prompt = system_prompt
        self.memory = memory or Memory(limit_turns=history_limit)
        self._allowed = allowed_user_ids
        self._media = media or MediaPolicy(
            vision=True, max_image_bytes=5 * 1024 * 1024, max_voice_seconds=120
        )
        self._clock = clock
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._queues: dict[int, asyncio.Queue[JsonDict]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self.me: Identity | None = None

    # -- intake --------------------------------------------------------------------

    def accept(self, update: JsonDict) -> bool:
        """Queue an update for its chat; False if it was seen before (Telegram retried)."""
        update_id = update.get("update_id")
        if isinstance(update_id, int):
            if update_id in self._seen:
                return False
            self._seen[update_id] = None
            while len(self._seen) > SEEN_UPDATES:
                self._seen.popitem(last=False)
        self._metrics.updates_received.inc()
        message = update.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("chat"), dict):
            return True  # nothing an agent answers (edits, member changes...)
        chat_id = message["chat"].get("id")
        if not isinstance(chat_id, int):
            return True
        queue = self._queues.setdefault(chat_id, asyncio.Queue())
        queue.put_nowait(message)
        worker = self._workers.get(chat_id)
        if worker is None or worker.done():
            self._workers[chat_id] = asyncio.create_task(self._work(chat_id, queue))
        return True

    @property
    def busy(self) -> bool:
        return any(not worker.done() for worker in self._workers.values())

    async def drain(self, timeout: float) -> None:
        """Wait for in-flight replies (SIGTERM), at most `timeout` seconds."""
        pending = [worker for worker in self._workers.values() if not worker.done()]
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=timeout)
            for worker in still_running:
                worker.cancel()

    async def _work(self, chat_id: int, queue: asyncio.Queue[JsonDict]) -> None:
        while not queue.empty():
            message = queue.get_nowait()
            try:
                await self._handle(message)
            except Exception:  # one bad update must not stop the chat's worker
                log.exception("handling an update of chat %s failed", chat_id)
        self._queues.pop(chat_id, None)
        self._workers.pop(chat_id, None)

    # -- one message -----------------------------------------------------------------

    async def _handle(self, message: JsonDict) -> None:
        chat = message["chat"]
        chat_id: int = chat["id"]
        private = chat.get("type") == "private"
        sender = message.get("from") or {}
        text = message.get("text")
        if not private and not self._addressed(message):
            return
        if self._allowed and sender.get("id") not in self._allowed:
            await self._reply(chat_id, TEXTS["not_allowed"], message)
            return
        if not isinstance(text, str) or not text.strip():
            await self._handle_media(chat_id, message, private=private)
            return
        text = self._without_mention(text)
        command = self._command(text)
        if command == START:
            name = self.me.first_name if self.me else "your assistant"
            await self._reply(chat_id, TEXTS["start"].format(name=name), message)
        elif command == HELP:
            await self._reply(chat_id, TEXTS["help"], message)
        elif command == RESET:
            self.memory.reset(chat_id)
            await self._reply(chat_id, TEXTS["reset"], message)
        else:
            await self._answer(chat_id, text, message, private=private)

    async def _handle_media(self, chat_id: int, message: JsonDict, *, private: bool) -> None:
        """A photo, image document, voice note or audio file; anything else is declined."""
        try:
            image = image_in(message, max_bytes=self._media.max_image_bytes)
            sound = None if image else sound_in(message, max_seconds=self._media.max_voice_seconds)
        except MediaRefused as refused:
            await self._reply(chat_id, self._refusal(refused.kind), message)
            return
        if image is not None:
            await self._answer_image(chat_id, image, message, private=private)
        elif sound is not None:
            await self._answer_sound(chat_id, sound, message, private=private)
        else:
            await self._reply(chat_id, TEXTS["text_only"], message)

    def _refusal(self, kind: str) -> str:
        megabytes = f"{self._media.max_image_bytes / (1024 * 1024):.1f}".removesuffix(".0")
        return TEXTS[kind].format(megabytes=megabytes, seconds=self._media.max_voice_seconds)

    async def _download(
        self, chat_id: int, file_id: str, message: JsonDict, *, max_bytes: int, too_big: str
    ) -> bytes | None:
        """The file's bytes, or None once the user has been told why not."""
        try:
            return await self._api.download(file_id, max_bytes=max_bytes)
        except FileTooLarge:
            await self._reply(chat_id, self._refusal(too_big), message)
        except TelegramApiError as error:
            log.warning("could not download a file in chat %s: %s", chat_id, error.code)
            await self._reply(chat_id, TEXTS["download"], message)
        return None

    async def _answer_image(
        self, chat_id: int, image: Image, message: JsonDict, *, private: bool
    ) -> None:
        if not self._media.vision:  # decided before downloading: the model never gets it
            await self._reply(chat_id, TEXTS["no_vision"], message)
            return
        data = await self._download(
            chat_id, image.file_id, message,
            max_bytes=self._media.max_image_bytes, too_big="image_too_big",
        )  # fmt: skip
        if data is None:
            return
        caption = self._without_mention(str(message.get("caption") or "")).strip()
        parts: list[JsonDict] = [{"type": "text", "text": caption}] if caption else []
        parts.append(image_part(image, data))
        remembered = f"[image] {caption}".strip()
        await self._answer(chat_id, parts, message, private=private, remembered=remembered)

    async def _answer_sound(
        self, chat_id: int, sound: Sound, message: JsonDict, *, private: bool
    ) -> None:
        data = await self._download(
            chat_id, sound.file_id, message, max_bytes=MAX_SOUND_BYTES, too_big="voice_too_long"
        )
        if data is None:
            return
        sender = message.get("from") or {}
        with contextlib.suppress(TelegramApiError):
            await self._api.call("sendChatAction", chat_id=chat_id, action="typing")
        try:
            transcript = await self._llm.transcribe(
                data, file_name=sound.file_name, chat_user=sender.get("id")
            )
        except LlmError as error:
            self._metrics.llm_failed(error.kind)
            log.warning("transcription failed (%s) for chat %s", error.kind, chat_id)
            await self._reply(chat_id, TEXTS[error.kind], message)
            return
        if not transcript.strip():
            await self._reply(chat_id, TEXTS["no_words"], message)
            return
        await self._answer(chat_id, transcript.strip(), message, private=private)

    def _addressed(self, message: JsonDict) -> bool:
        """In groups an agent speaks only when mentioned or replied to."""
        if self.me is None:
            return False
        replied = (message.get("reply_to_message") or {}).get("from") or {}
        if replied.get("id") == self.me.id:
            return True
        text = str(message.get("text") or message.get("caption") or "")
        entities = message.get("entities") or message.get("caption_entities") or []
        mention = f"@{self.me.username}".lower()
        for entity in entities:
            if entity.get("type") in ("mention", "bot_command"):
                piece = _utf16_slice(text, entity.get("offset", 0), entity.get("length", 0))
                if piece.lower() == mention or piece.lower().endswith(mention):
                    return True
        return False

    def _without_mention(self, text: str) -> str:
        if self.me is None:
            return text
        cleaned = re.sub(rf"@{re.escape(self.me.username)}\b", "", text, flags=re.IGNORECASE)
        return cleaned.strip() or text

    def _command(self, text: str) -> str | None:
        match = re.match(r"^/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?:\s|$)", text)
        if match is None:
            return None
        addressee = match.group(2)
        if addressee and self.me and addressee.lower() != self.me.username.lower():
            return None
        return match.group(1).lower()

    async def _answer(
        self, chat_id: int, content: str | list[JsonDict], message: JsonDict, *, private: bool,
        remembered: str | None = None,
    ) -> None:  # fmt: skip
        """Ask the model and reply; `remembered` is what history keeps of the user's turn
        (an image's caption rather than its bytes), `content` itself by default."""
        started = self._clock()
        prompt: list[JsonDict] = [
            {"role": "system", "content": self._system_prompt},
            *await self.memory.messages(chat_id),
            {"role": "user", "content": content},
        ]
        usage = Usage()
        typing = asyncio.create_task(self._keep_typing(chat_id))
        try:
            sender = message.get("from") or {}
            reply = await self._generate(
                chat_id, prompt, usage, stream_drafts=private, chat_user=sender.get("id")
            )
        except LlmError as error:
            self._metrics.llm_failed(error.kind)
            log.warning("LLM call failed (%s) for chat %s", error.kind, chat_id)
            await self._reply(chat_id, TEXTS[error.kind], message)
            return
        finally:
            await cancel_and_wait(typing)
        self._metrics.llm_answered(usage.seconds, usage.prompt_tokens, usage.completion_tokens)
        reply = reply.strip() or TEXTS["empty"]
        sent_at = self._clock()
        await self._reply(chat_id, reply, message, formatted=True)
        turn = remembered if remembered is not None else content
        self.memory.add_turn(chat_id, turn if isinstance(turn, str) else "", reply)
        own_time = (sent_at - started - usage.seconds) + (self._clock() - sent_at)
        self._metrics.handling_overhead.observe(max(own_time, 0.0))

    async def _generate(
        self, chat_id: int, prompt: list[JsonDict], usage: Usage, *, stream_drafts: bool,
        chat_user: int | None = None,
    ) -> str:  # fmt: skip
        pieces: list[str] = []
        draft_id = int(time.time() * 1000) % 2_000_000_000 + 1
        # The first draft goes out once the answer has taken FEEDBACK_DELAY.
        last_draft, shown = self._clock() - DRAFT_INTERVAL + FEEDBACK_DELAY, ""
        answer = (
            self._llm.stream(prompt, usage, chat_user=chat_user)
            if self.tools is None
            else self.tools.stream(chat_id, prompt, usage, chat_user=chat_user)
        )
        async for piece in answer:
            pieces.append(piece)
            now = self._clock()
            if stream_drafts and now - last_draft >= DRAFT_INTERVAL:
                text = "".join(pieces)[:MAX_MESSAGE]
                if text.strip() and text != shown:
                    stream_drafts = await self._draft(chat_id, draft_id, text)
                    last_draft, shown = now, text
        return "".join(pieces)

    async def _draft(self, chat_id: int, draft_id: int, text: str) -> bool:
        """Show the reply so far; False stops drafting (drafts are a nicety, not a must)."""
        try:
            await self._api.call("sendMessageDraft", chat_id=chat_id, draft_id=draft_id, text=text)
        except TelegramApiError as error:
            log.info("draft not shown in chat %s: %s", chat_id, error.code)
            return False
        return True

    async def _keep_typing(self, chat_id: int) -> None:
        await asyncio.sleep(FEEDBACK_DELAY)
        while True:
            with contextlib.suppress(TelegramApiError):
                await self._api.call("sendChatAction", chat_id=chat_id, action="typing")
            await asyncio.sleep(TYPING_INTERVAL)

    async def _reply(
        self, chat_id: int, text: str, message: JsonDict, *, formatted: bool = False
    ) -> None:
        """Send `text` (split if long); formatting Telegram rejects falls back to plain text."""
        private = message["chat"].get("type") == "private"
        for part in split_message(text):
            params: JsonDict = {"chat_id": chat_id, "text": part}
            if not private:
                params["reply_parameters"] = {
                    "message_id": message.get("message_id"),
                    "allow_sending_without_reply": True,
                }
            try:
                if formatted:
                    try:
                        await self._api.call_with_retry(
                            "sendMessage", parse_mode="Markdown", **params
                        )
                    except TelegramApiError as error:
                        if not error.is_parse_error:
                            raise
                        await self._api.call_with_retry("sendMessage", **params)
                else:
                    await self._api.call_with_retry("sendMessage", **params)
            except TelegramApiError as error:
                log.warning("could not answer chat %s: %s", chat_id, error.code)
                return
            self._metrics.replies_sent.inc()


def _utf16_slice(text: str, offset: int, length: int) -> str:
    encoded = text.encode("utf-16-le")
    return encoded[offset * 2 : (offset + length) * 2].decode("utf-16-le", errors="ignore")
