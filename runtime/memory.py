"""Per-chat history: held in the process, kept by the LLM gateway when there is one.

A chat's turns are bounded by count (HISTORY_LIMIT) and characters, oldest dropped
first. With MEMORY_URL set (the manager sets it to the gateway's `/v1/memory`):
- a chat is read from the gateway the first time this process sees it, so a
  restart, rollout or new token forgets nothing;
- after each reply the chat's whole bounded history is written back by one
  background writer, in order, coalesced per chat and retried: never on the
  reply's path (a slow database must not slow an answer);
- `/reset` and "forget all" go through the same writer, so an older write cannot
  land after them and bring a forgotten conversation back;
- a stop flushes what is still unwritten (bounded by the drain time).
Chats idle for MEMORY_IDLE_DAYS are forgotten here and, by the manager's sweep,
in the gateway. Without MEMORY_URL, history lives in the process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Turn = dict[str, str]
HISTORY_CHAR_BUDGET = 24_000
MAX_CHATS_REMEMBERED = 10_000
LOAD_TIMEOUT = 3.0
WRITE_TIMEOUT = 10.0
WRITE_ATTEMPTS = 5
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


class MemoryStoreError(Exception):
    """The gateway did not take or give a chat's history."""


class MemoryStore(Protocol):
    async def load(self, chat_id: int) -> list[Turn]: ...
    async def save(self, chat_id: int, turns: list[Turn]) -> None: ...
    async def forget(self, chat_id: int | None) -> None: ...
    async def close(self) -> None: ...


class GatewayMemory:
    """The gateway's `/v1/memory`, authenticated with the agent's gateway credential."""

    def __init__(self, *, url: str, credential: str) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {credential}"}
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers)
        return self._http

    async def _call(
        self, method: str, path: str, *, timeout: float, body: Any = None
    ) -> dict[str, Any]:
        try:
            async with self._session().request(
                method, f"{self._url}{path}", json=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:  # fmt: skip
                if response.status >= 300:
                    raise MemoryStoreError(f"{method} memory answered {response.status}")
                if response.status == 204:
                    return {}
                answer = await response.json()
                return answer if isinstance(answer, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise MemoryStoreError(f"{method} memory failed: {type(error).__name__}") from None

    async def load(self, chat_id: int) -> list[Turn]:
        answer = await self._call("GET", f"/chats/{chat_id}", timeout=LOAD_TIMEOUT)
        turns = answer.get("turns")
        if not isinstance(turns, list):
            return []
        return [
            {"role": str(turn["role"]), "content": str(turn["content"])}
            for turn in turns
            if isinstance(turn, dict) and turn.get("role") in ("user", "assistant")
        ]

    async def save(self, chat_id: int, turns: list[Turn]) -> None:
        await self._call("PUT", f"/chats/{chat_id}", timeout=WRITE_TIMEOUT, body={"turns": turns})

    async def forget(self, chat_id: int | None) -> None:
        path = "/chats" if chat_id is None else f"/chats/{chat_id}"
        await self._call("DELETE", path, timeout=WRITE_TIMEOUT)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


@dataclass
class _Chat:
    turns: deque[Turn] = field(default_factory=deque)
    loaded: bool = False  # False: the stored turns are not known yet (no store, or it failed)
    used_at: float = 0.0


@dataclass(frozen=True)
class _Write:
    chat_id: int | None  # None with forget: every chat
    forget: bool
    done: asyncio.Future[None] | None = None


class Memory:
    """The conversations of one agent; see the module docstring."""

    def __init__(
        self,
        *,
        limit_turns: int,
        store: MemoryStore | None = None,
        char_budget: int = HISTORY_CHAR_BUDGET,
        idle_seconds: float = 30 * 86400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit_turns
        self._store = store
        self._char_budget = char_budget
        self._idle = idle_seconds
        self._clock = clock
        self._chats: OrderedDict[int, _Chat] = OrderedDict()
        self._writes: asyncio.Queue[_Write] = asyncio.Queue()
        self._saves_queued: set[int] = set()
        self._writer: asyncio.Task[None] | None = None
        self._all_forgotten = False

    @property
    def kept(self) -> bool:
        """True when conversations outlive the process."""
        return self._store is not None

    async def messages(self, chat_id: int) -> list[Turn]:
        """The chat's turns, oldest first; read from the store once per process."""
        if self._limit == 0:
            return []
        chat = self._chat(chat_id)
        if not chat.loaded and self._store is not None:
            try:
                stored = await self._store.load(chat_id)
            except MemoryStoreError as error:
                # Answered without the past; tried again on the chat's next message.
                log.warning("could not read chat %s's history: %s", chat_id, error)
            else:
                if self._chats.get(chat_id) is chat:  # not reset or forgotten meanwhile
                    chat.turns = deque([*stored, *chat.turns])
                    chat.loaded = True
                    self._bound(chat)
                else:
                    chat = self._chat(chat_id)
        return list(chat.turns)

    def add_turn(self, chat_id: int, user: str, assistant: str) -> None:
        if self._limit == 0:
            return
        chat = self._chat(chat_id)
        chat.turns.append({"role": "user", "content": user})
        chat.turns.append({"role": "assistant", "content": assistant})
        self._bound(chat)
        if chat.loaded:  # else written once its stored turns are known (no overwrite)
            self._save_later(chat_id)

    def reset(self, chat_id: int) -> None:
        self._chats.pop(chat_id, None)
        self._enqueue(_Write(chat_id, forget=True))
        self._chats[chat_id] = _Chat(loaded=True, used_at=self._clock())

    async def forget_all(self, timeout: float = WRITE_TIMEOUT * 2) -> bool:
        """Every chat, here and in the store; True once the store has forgotten too."""
        self._chats.clear()
        # Whatever the store holds from now on, this process wrote: no chat needs reading.
        self._all_forgotten = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Write(None, forget=True, done=done))
        if self._store is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(done)
        except (TimeoutError, MemoryStoreError):
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Write what is still unwritten (bounded), then release the store."""
        if self._writer is not None and not self._writer.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._writes.join()
            await cancel_and_wait(self._writer)
        if self._store is not None:
            await self._store.close()

    # -- inside -------------------------------------------------------------------------

    def _chat(self, chat_id: int) -> _Chat:
        now = self._clock()
        chat = self._chats.get(chat_id)
        if chat is not None and now - chat.used_at > self._idle:
            self.reset(chat_id)  # idle too long: forgotten here and in the store
            chat = self._chats[chat_id]
        if chat is None:
            chat = self._chats[chat_id] = _Chat(loaded=self._store is None or self._all_forgotten)
        chat.used_at = now
        self._chats.move_to_end(chat_id)
        while len(self._chats) > MAX_CHATS_REMEMBERED:
            self._chats.popitem(last=False)  # still in the store: read back if it returns
        return chat

    def _bound(self, chat: _Chat) -> None:
        turns = chat.turns
        while len(turns) > 2 * self._limit or (
            len(turns) > 2 and sum(len(turn["content"]) for turn in turns) > self._char_budget
        ):
            turns.popleft()
            turns.popleft()

    def _save_later(self, chat_id: int) -> None:
        if chat_id not in self._saves_queued:
            self._saves_queued.add(chat_id)
            self._enqueue(_Write(chat_id, forget=False))

    def _enqueue(self, write: _Write) -> None:
        if self._store is None:
            if write.done is not None and not write.done.done():
                write.done.set_result(None)
            return
        self._writes.put_nowait(write)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(self._store))

    async def _write_all(self, store: MemoryStore) -> None:
        while True:
            write = await self._writes.get()
            try:
                await self._write(store, write)
            finally:
                self._writes.task_done()

    async def _write(self, store: MemoryStore, write: _Write) -> None:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                if write.forget:
                    await store.forget(write.chat_id)
                elif write.chat_id is not None:
                    self._saves_queued.discard(write.chat_id)
                    chat = self._chats.get(write.chat_id)
                    if chat is None or not chat.loaded:
                        return  # reset or dropped since: nothing to keep
                    await store.save(write.chat_id, list(chat.turns))
                if write.done is not None and not write.done.done():
                    write.done.set_result(None)
                return
            except MemoryStoreError as error:
                if write.chat_id is not None and not write.forget:
                    self._saves_queued.discard(write.chat_id)
                if attempt + 1 == WRITE_ATTEMPTS:
                    log.warning("gave up writing memory of chat %s: %s", write.chat_id, error)
                    if write.done is not None and not write.done.done():
                        write.done.set_exception(error)
                    return
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
