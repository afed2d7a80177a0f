"""Broadcasts: one admin message to many users, at Telegram's pace, nothing lost or twice.

Every recipient is a row written before the send ("sending") and after it
(sent, failed, blocked, uncertain). A manager that stops mid-broadcast resumes
it at its next start from the pending rows; a row a crash left in "sending"
(Telegram may or may not have delivered it) becomes "uncertain" and is never
sent again, so nobody gets a copy twice. At most `workers` rows can be in
flight, so at most that many are uncertain after a crash; the report counts them.

The same holds while running: a send whose outcome is unknown (a timeout or a
connection lost after the request may have left) is "uncertain", not retried.
Only what Telegram documents as not delivered is sent again: a 429, a 5xx, or
a connection that was never made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)

from manager_bot import texts
from manager_bot.db.models import Broadcast, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.flood_control import paced_by_caller
from manager_bot.i18n import Languages, language_of, speaking_to
from manager_bot.metrics import BROADCAST_MESSAGES, BROADCAST_REMAINING
from runtime.tasks import cancel_all, cancel_and_wait, wait_out

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3  # transient errors (5xx, no connection) per recipient
BATCH = 200
PROGRESS_EVERY = 2.0  # seconds between progress edits


@dataclass(frozen=True)
class Content:
    html: str
    photo_file_id: str | None = None


class SlidingWindow:
    """At most `rate` sends in any one-second window: Telegram's own rule, no bursts.

    The window is a little longer than a second: Telegram counts arrivals, and a
    send that left early may arrive late.
    """

    SECONDS = 1.015

    def __init__(self, rate: float) -> None:
        self._rate = max(1, int(rate))
        self._sent: collections.deque[float] = collections.deque()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """A 429's retry_after holds every sender, not just the one that got it."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                while self._sent and now - self._sent[0] >= self.SECONDS:
                    self._sent.popleft()
                if len(self._sent) < self._rate:
                    self._sent.append(now)
                    return
                await asyncio.sleep(self.SECONDS - (now - self._sent[0]) + 0.001)


class Broadcaster:
    def __init__(
        self, *, bot: Bot, database: Database, rate: float = 30.0, workers: int = 4,
        send_timeout: int | None = None, languages: Languages | None = None,
        sends: bool = True,
    ) -> None:  # fmt: skip
        """`send_timeout`: seconds for one send (default: the bot session's); past it
        the outcome is unknown, so that recipient is uncertain. `languages`: the
        progress and report are in their author's (the broadcast itself is as written).
        `sends`: False with several replicas: `start` only records, and the leader's
        `resume_unfinished` picks the broadcast up (one sender, wherever /broadcast came)."""
        self._sends = sends
        self._bot = bot
        self._db = database
        self._languages = languages
        self._window = SlidingWindow(rate)
        self._workers = workers
        self._send_timeout = send_timeout
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[int] = set()
        self._stopping = False
        self._pausing = False  # a stopping leader's wind-down: until `halt`

    # -- use cases -----------------------------------------------------------------

    async def audience_size(self, audience: str) -> int:
        async with self._db.session() as session:
            return await Repositories(session).broadcasts.audience_size(audience)

    async def start(
        self, *, author_id: int, content: Content, audience: str, progress: tuple[int, int]
    ) -> tuple[int, int]:
        """Snapshot the audience, record the broadcast, send in the background: (id, recipients)."""
        async with self._db.session() as session:
            repos = Repositories(session)
            broadcast = Broadcast(
                author_id=author_id, text=content.html, photo_file_id=content.photo_file_id,
                audience=audience, status="sending", progress_chat_id=progress[0],
                progress_message_id=progress[1],
            )  # fmt: skip
            recipients = await repos.broadcasts.create(broadcast)
            await repos.audit.record(
                actor_id=author_id, action="broadcast", agent_id=None, outcome="started",
                detail=f"#{broadcast.id} to {audience}: {recipients} recipients",
            )  # fmt: skip
            broadcast_id = broadcast.id
        if self._sends:
            self._spawn(broadcast_id)
        return broadcast_id, recipients

    async def resume_unfinished(self) -> list[int]:
        """At start-up (or on the leader, every few seconds): carry on with broadcasts a
        stop or crash interrupted, or another replica recorded. Returns those started now."""
        async with self._db.session() as session:
            unfinished = [b.id for b in await Repositories(session).broadcasts.unfinished()]
        return [broadcast_id for broadcast_id in unfinished if self._spawn(broadcast_id)]

    async def wind_down(self) -> None:
        """A leader stopping (SIGTERM), still holding the Lease: no new sends; the ones in
        flight finish and are recorded, so the next leader resumes with nothing uncertain.
        `halt` follows (it cancels whatever the caller's time limit cut short)."""
        self._pausing = True
        running = [task for task in self._tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running)

    async def halt(self) -> None:
        """Leadership lost: sending stops at once, before the next leader resumes. A row
        cut off in "sending" turns uncertain there, so nobody gets a copy twice."""
        # The sends' ends are absorbed, a cancellation of the caller is not.
        await cancel_all(task for task in self._tasks.values() if not task.done())
        self._tasks.clear()
        self._pausing = False

    async def cancel(self, *, actor_id: int) -> list[int]:
        """Stop every running broadcast; what was sent stays sent, the rest is not sent."""
        async with self._db.session() as session:
            repos = Repositories(session)
            running = list(await repos.broadcasts.unfinished())
            for broadcast in running:
                broadcast.status = "cancelled"
                broadcast.finished_at = utcnow()
                await repos.audit.record(
                    actor_id=actor_id, action="broadcast_cancel", agent_id=None, outcome="ok",
                    detail=f"#{broadcast.id}",
                )  # fmt: skip
        ids = [b.id for b in running]
        self._cancelled.update(ids)
        for broadcast_id in ids:
            task = self._tasks.get(broadcast_id)
            if task is not None:
                await wait_out(task)
        return ids

    async def wait(self, broadcast_id: int) -> None:
        task = self._tasks.get(broadcast_id)
        if task is not None:
            await task

    async def close(self, timeout: float = 10.0) -> None:
        """Manager stopping: sends in flight finish, no new ones start; the rows say where
        to resume next time. Only what outlives `timeout` is cancelled (and may turn
        uncertain)."""
        self._stopping = True
        running = [task for task in self._tasks.values() if not task.done()]
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=timeout)
        for task in pending:
            await cancel_and_wait(task)

    # -- sending --------------------------------------------------------------------

    def _spawn(self, broadcast_id: int) -> bool:
        """Sends `broadcast_id` unless this process already does: True if started now."""
        task = self._tasks.get(broadcast_id)
        if task is None or task.done():
            self._tasks[broadcast_id] = asyncio.create_task(self._run(broadcast_id))
            return True
        return False

    async def _run(self, broadcast_id: int) -> None:
        async with self._db.session() as session:
            repos = Repositories(session)
            broadcast = await repos.broadcasts.get(broadcast_id)
            if broadcast is None:
                return
            uncertain = await repos.broadcasts.interrupted_to_uncertain(broadcast_id)
        if uncertain:
            log.warning(
                "broadcast #%d: %d deliveries uncertain after a crash", broadcast_id, uncertain
            )
        content = Content(broadcast.text, broadcast.photo_file_id)
        started = time.monotonic()
        reporter = asyncio.create_task(self._report_progress(broadcast, started))
        try:
            while not self._halted(broadcast_id):
                async with self._db.session() as session:
                    repos = Repositories(session)
                    stored = await repos.broadcasts.get(broadcast_id)
                    if stored is None or stored.status != "sending":  # cancelled on a replica
                        self._cancelled.add(broadcast_id)
                        break
                    batch = await repos.broadcasts.pending(broadcast_id, BATCH)
                if not batch:
                    break
                queue: asyncio.Queue[int] = asyncio.Queue()
                for user_id in batch:
                    queue.put_nowait(user_id)
                await asyncio.gather(
                    *(self._worker(broadcast_id, content, queue) for _ in range(self._workers))
                )
        finally:
            await cancel_and_wait(reporter)
        if not (self._stopping or self._pausing):  # stays "sending": resumed next time
            await self._finish(broadcast, started)

    def _halted(self, broadcast_id: int) -> bool:
        return self._stopping or self._pausing or broadcast_id in self._cancelled

    async def _worker(self, broadcast_id: int, content: Content, queue: asyncio.Queue[int]) -> None:
        while not queue.empty() and not self._halted(broadcast_id):
            user_id = queue.get_nowait()
            await self._deliver(broadcast_id, content, user_id)

    async def _deliver(self, broadcast_id: int, content: Content, user_id: int) -> None:
        failures = 0
        while True:
            await self._record(broadcast_id, user_id, "sending", attempt=True)
            try:
                await self._window.acquire()  # right before the send: Telegram counts arrivals
            except asyncio.CancelledError:  # stopped while waiting its turn: never sent
                await asyncio.shield(self._record(broadcast_id, user_id, "pending"))
                raise
            if self._pausing:  # not sent: the next leader sends it, not as uncertain
                await self._record(broadcast_id, user_id, "pending")
                return
            try:
                await self._send(user_id, content)
            except TelegramRetryAfter as error:  # flood control: wait, then the same recipient
                self._window.pause(error.retry_after)
                await self._record(broadcast_id, user_id, "pending")
                continue
            except TelegramForbiddenError:  # blocked the bot: later broadcasts skip them
                async with self._db.session() as session:
                    repos = Repositories(session)
                    await repos.users.mark_blocked(user_id)
                    await repos.broadcasts.set_delivery(broadcast_id, user_id, "blocked")
                BROADCAST_MESSAGES.labels("blocked").inc()
                return
            except (TelegramServerError, TelegramNetworkError, ClientDecodeError) as error:
                if _outcome_unknown(error):  # it may have arrived: a second copy is worse
                    log.warning(
                        "broadcast #%d: delivery to %s uncertain (%s); not sent again",
                        broadcast_id, user_id, error,
                    )  # fmt: skip
                    await self._record(
                        broadcast_id, user_id, "uncertain", error=type(error).__name__
                    )
                    BROADCAST_MESSAGES.labels("uncertain").inc()
                    return
                failures += 1
                if failures < MAX_ATTEMPTS:
                    await self._record(broadcast_id, user_id, "pending")
                    await asyncio.sleep(0.5 * failures)
                    continue
                await self._record(broadcast_id, user_id, "failed", error=type(error).__name__)
                BROADCAST_MESSAGES.labels("failed").inc()
                return
            except TelegramAPIError as error:  # 400: chat not found, user deactivated...
                await self._record(broadcast_id, user_id, "failed", error=error.message[:250])
                BROADCAST_MESSAGES.labels("failed").inc()
                return
            await self._record(broadcast_id, user_id, "sent")
            BROADCAST_MESSAGES.labels("sent").inc()
            return

    async def _send(self, user_id: int, content: Content) -> None:
        timeout = self._send_timeout
        with paced_by_caller():  # a 429 pauses every send (_deliver), at once
            if content.photo_file_id:
                await self._bot.send_photo(
                    user_id, content.photo_file_id, caption=content.html, request_timeout=timeout
                )
            else:
                await self._bot.send_message(user_id, content.html, request_timeout=timeout)

    async def _record(
        self, broadcast_id: int, user_id: int, status: str, *, error: str | None = None,
        attempt: bool = False,
    ) -> None:  # fmt: skip
        async with self._db.session() as session:
            await Repositories(session).broadcasts.set_delivery(
                broadcast_id, user_id, status, error=error, attempt=attempt
            )

    # -- progress ------------------------------------------------------------------

    async def _counts(self, broadcast_id: int) -> dict[str, int]:
        async with self._db.session() as session:
            return await Repositories(session).broadcasts.counts(broadcast_id)

    async def _report_progress(self, broadcast: Broadcast, started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            counts = await self._counts(broadcast.id)
            BROADCAST_REMAINING.labels(str(broadcast.id)).set(counts.get("pending", 0))
            with speaking_to(self._languages, await self._author_language(broadcast)):
                text = texts.broadcast_progress(broadcast.id, counts, time.monotonic() - started)
            await self._edit_progress(broadcast, text)

    async def _finish(self, broadcast: Broadcast, started: float) -> None:
        cancelled = broadcast.id in self._cancelled
        async with self._db.session() as session:
            repos = Repositories(session)
            stored = await repos.broadcasts.get(broadcast.id)
            if stored is not None and stored.status == "sending":
                stored.status = "done"
                stored.finished_at = utcnow()
            counts = await repos.broadcasts.counts(broadcast.id)
            await repos.audit.record(
                actor_id=broadcast.author_id, action="broadcast", agent_id=None,
                outcome="cancelled" if cancelled else "ok",
                detail=f"#{broadcast.id}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            )  # fmt: skip
        with contextlib.suppress(KeyError):
            BROADCAST_REMAINING.remove(str(broadcast.id))
        with speaking_to(self._languages, await self._author_language(broadcast)):
            report = texts.broadcast_report(
                broadcast.id, counts, time.monotonic() - started, cancelled=cancelled
            )
        await self._edit_progress(broadcast, report)

    async def _author_language(self, broadcast: Broadcast) -> str:
        return await language_of(self._languages, broadcast.author_id)

    async def _edit_progress(self, broadcast: Broadcast, text: str) -> None:
        if broadcast.progress_chat_id is None or broadcast.progress_message_id is None:
            return
        try:
            await self._bot.edit_message_text(
                text, chat_id=broadcast.progress_chat_id, message_id=broadcast.progress_message_id
            )
        except TelegramAPIError as error:  # "message is not modified" and the like
            log.debug("progress edit skipped: %s", error)


def _outcome_unknown(
    error: TelegramServerError | TelegramNetworkError | ClientDecodeError,
) -> bool:
    """Whether Telegram may have delivered a send that failed.

    A 5xx answer means it did not (Telegram's own word), and so does a connection
    that was never made (refused, unresolvable, timed out while connecting): the
    request never left. A timeout or a dropped connection after that, or an answer
    we cannot read, may hide a delivery.
    """
    if isinstance(error, TelegramServerError):
        return False
    never_connected = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    return not isinstance(error.__cause__, never_connected)
