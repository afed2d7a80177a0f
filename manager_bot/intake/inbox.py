"""Per-user inboxes in Redis: any replica takes an update in, one replica at a time
handles a user's updates, in update_id order.

The replica that receives an update stores it (once: a per-update marker drops
Telegram's redeliveries) before Telegram gets its 200. Whichever replica then holds
the user's lock (SET NX PX, renewed while it works, released after) handles the
updates one by one, lowest update_id first, and removes each from the inbox once
the Dispatcher is done with it. Reading the next update and checking the lock is
one script, so a replica that lost its lock (it stalled past the lock's life)
cannot take another. A replica that dies holding a lock lets it expire; the sweep
(every `sweep_every` seconds on every replica) then finds the user's non-empty
inbox with a free lock and drains it.

An update is handled at least once: the one a replica was handling at the instant
it died is still in the inbox, and the next holder handles it again (its user may
then get that answer twice). Losing it instead would leave a tap or a message with
no answer at all, which a user cannot tell from a broken bot; what an update does
twice is guarded where it matters (a deploy of a bot already live is refused).

Lanes: a user's updates share one lane (the sender, as PerUserOrderMiddleware keys
them); an update with no sender goes by its chat, and the rest share one lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram.types import Update
from redis.asyncio import Redis

from runtime.tasks import cancel_all, cancel_and_wait

log = logging.getLogger(__name__)

Feed = Callable[[Update], Awaitable[Any]]
Parse = Callable[[str], Update]

SEEN_SECONDS = 24 * 3600  # Telegram keeps an unacknowledged update for at most 24 hours

# KEYS: seen marker, queue, lanes set; ARGV: update_id, body, seen seconds, lane
_ENQUEUE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[4])
  return 1
end
return 0
"""
# KEYS: lock, queue, lanes set; ARGV: token, lane. {0}: lock lost, {1}: empty, {2, body}
# The update stays in the queue until `_DONE` removes it (at least once).
_TAKE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local item = redis.call('ZRANGE', KEYS[2], 0, 0)
if #item == 0 then
  redis.call('SREM', KEYS[3], ARGV[2])
  return {1}
end
return {2, item[1]}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lane_of(update: Update) -> str:
    """The lane an update waits in: its sender, else its chat, else the shared one."""
    try:
        event = update.event
    except Exception:  # an update type this aiogram does not know: no sender to read
        return "other"
    user = getattr(event, "from_user", None) or getattr(event, "user", None)
    if user is not None:
        return f"u{user.id}"
    chat = getattr(event, "chat", None)
    if chat is not None:
        return f"c{chat.id}"
    return "other"


def replica_name() -> str:
    """Who holds a lock, for an operator reading Redis: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class UpdateInbox:
    """One replica's side of the shared inboxes of one manager bot."""

    def __init__(
        self,
        redis: Redis,
        *,
        bot_id: int,
        feed: Feed,
        parse: Parse,
        lock_ms: int = 10_000,
        sweep_every: float = 1.0,
        name: str | None = None,
        on_taken: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self._on_taken = on_taken  # told each time this replica takes a lane's lock
        # Per bot: two installations may share one Redis.
        self._prefix = f"hatchbot:intake:{bot_id}"
        self._feed = feed
        self._parse = parse
        self._lock_ms = lock_ms
        self._sweep_every = sweep_every
        self.name = name or replica_name()
        self._draining: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._enqueue = redis.register_script(_ENQUEUE)
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # Keys of one lane share a hash tag: a Redis Cluster would keep them on one node.
    def _queue(self, lane: str) -> str:
        return f"{self._prefix}:{{{lane}}}:queue"

    def _lock(self, lane: str) -> str:
        return f"{self._prefix}:{{{lane}}}:lock"

    def _seen(self, lane: str, update_id: int) -> str:
        return f"{self._prefix}:{{{lane}}}:seen:{update_id}"

    @property
    def _lanes(self) -> str:
        return f"{self._prefix}:lanes"

    async def put(self, update: Update, body: str) -> bool:
        """Store the update in its lane's inbox (False: it was here before), then wake
        this replica's drainer of the lane. Returns once Redis has it."""
        lane = lane_of(update)
        keys = [self._seen(lane, update.update_id), self._queue(lane), self._lanes]
        added = bool(
            await self._enqueue(keys=keys, args=[update.update_id, body, SEEN_SECONDS, lane])
        )
        self.wake(lane)
        return added

    def wake(self, lane: str) -> None:
        """Drain the lane here unless this replica already is (it will see the update)."""
        if self._stopping:
            return
        running = self._draining.get(lane)
        if running is None or running.done():
            self._draining[lane] = asyncio.create_task(self._drain(lane))

    async def _drain(self, lane: str) -> None:
        try:
            # Until the lane is empty with its lock released: an update stored between
            # our last look and the release was refused the lock, so look again.
            while not self._stopping and await self._redis.exists(self._queue(lane)):
                token = f"{self.name}:{uuid.uuid4().hex[:8]}"
                if not await self._redis.set(self._lock(lane), token, nx=True, px=self._lock_ms):
                    return  # another replica drains it (or its lock will expire: the sweep)
                if self._on_taken is not None:
                    self._on_taken(lane)  # what this replica remembers of it may be stale
                try:
                    await self._drain_holding(lane, token)
                finally:
                    # Shielded: a cancelled drain still frees the lane for the others.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self._release(keys=[self._lock(lane)], args=[token]))
        except Exception:
            log.exception("intake: draining a lane failed; the sweep retries it")
        finally:
            if self._draining.get(lane) is asyncio.current_task():
                del self._draining[lane]

    async def _drain_holding(self, lane: str, token: str) -> None:
        renewing = asyncio.create_task(self._keep_lock(lane, token))
        try:
            while not self._stopping and not renewing.done():
                taken = await self._take(
                    keys=[self._lock(lane), self._queue(lane), self._lanes], args=[token, lane]
                )
                if taken[0] != 2:  # empty, or the lock was lost (someone else drains)
                    return
                body = taken[1].decode() if isinstance(taken[1], bytes) else str(taken[1])
                try:
                    await self._feed(self._parse(body))
                except Exception:  # the Dispatcher's error handler has had its say
                    log.exception("intake: an update failed in the dispatcher")
                # Done with it (whoever holds the lane now, it must not come again).
                await asyncio.shield(self._redis.zrem(self._queue(lane), taken[1]))
        finally:
            await cancel_and_wait(renewing)

    async def _keep_lock(self, lane: str, token: str) -> None:
        """Renews the lock every third of its life; returns when it was lost."""
        while True:
            await asyncio.sleep(self._lock_ms / 3000)
            if not await self._renew(keys=[self._lock(lane)], args=[token, self._lock_ms]):
                log.warning("intake: lost the lock of a lane; another replica drains it")
                return

    async def sweep(self) -> None:
        """Drain every non-empty lane whose lock is free (its holder died)."""
        lanes = await self._redis.smembers(self._lanes)
        for raw in lanes:
            lane = raw.decode() if isinstance(raw, bytes) else str(raw)
            if not await self._redis.exists(self._lock(lane)):
                self.wake(lane)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        # The flag too: a cancel lost inside redis-py (runtime/tasks.py) ends the loop at
        # its next turn rather than at the re-cancel.
        while not self._stopping:
            try:
                await self.sweep()
            except Exception as error:  # Redis away for a moment: next time
                log.warning("intake: sweep failed: %s", type(error).__name__)
            await asyncio.sleep(self._sweep_every)

    async def stop(self, *, grace: float = 10.0) -> None:
        """No more drains here; the update in hand gets `grace` seconds to finish, the
        rest stay in Redis for the other replicas (locks released)."""
        self._stopping = True
        if self._sweeper is not None:
            await cancel_and_wait(self._sweeper)
        running = [task for task in self._draining.values() if not task.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            await cancel_all(late)

    async def held(self, lane: str) -> bool:
        """Whether some replica holds the lane's lock (is draining it) right now."""
        return bool(await self._redis.exists(self._lock(lane)))

    async def pending(self, lane: str) -> int:
        """Updates waiting in a lane (for tests and the doctor)."""
        count: int = await self._redis.zcard(self._queue(lane))
        return count
