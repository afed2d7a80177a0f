"""One leader among the manager's replicas: a Kubernetes Lease, held as client-go holds it.

The algorithm is client-go's `leaderelection` (the one controllers and Kopf rely on):
a candidate reads the Lease and takes it when it is free, released, or unchanged for
a lease duration *as this process observed it* (its own monotonic clock, so clock
skew between nodes does not matter); the leader renews it every retry period and
gives up when it could not renew for the renew deadline. The renew deadline (10 s)
is shorter than the lease duration (15 s): a leader that cannot reach the API stops
its jobs before anyone else may start them. Every write carries the resourceVersion
it read, so two candidates never both win: the loser's write is refused with 409.

One refinement, so that a takeover comes within the lease duration of the leader's
death rather than up to two retry periods after it: a change is dated from when the
read *before* the one that showed it was sent (the write came after that read), not
from when it was seen, and a candidate asks again right when the lease runs out.
That dating is used only when the two reads were close enough in time (see
`_observe`) for the renew deadline to still end before the lease does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from manager_bot.backends.base import BackendError
from manager_bot.config import ManagerSettings
from runtime.tasks import cancel_all

if TYPE_CHECKING:
    from manager_bot.backends.kubernetes import KubernetesBackend

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

LEASE_NAME = "hatchbot-manager-leader"
# (verb, API group, resource) the election needs in the manager's namespace: k8s/'s Role
# grants exactly this (get and update on the Lease by name) and `doctor` asks about it.
LEASE_ACCESS = frozenset(
    {(verb, "coordination.k8s.io", "leases") for verb in ("get", "create", "update")}
)
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
# Candidates wait a retry period plus up to this fraction of one: they do not all ask at
# once. (client-go uses 1.2; with two or three replicas a herd is no concern, and short
# gaps between reads date a change more closely.)
JITTER = 0.2
RELEASE_TIMEOUT = 5.0
WIND_DOWN = 3.0  # seconds a stopping leader lets work in flight finish, at most


def leader_elected(settings: ManagerSettings) -> bool:
    """Replicas share the work only in webhook mode on Kubernetes; polling, the local
    backend and MANAGER_REPLICAS=1 are one process that runs every job itself."""
    return (
        settings.backend == "kubernetes"
        and settings.manager_webhook
        and settings.manager_replicas != 1
    )


def new_identity() -> str:
    """The pod's name (its hostname) and a random suffix: a restarted container with the
    same name is a new candidate, not the old leader."""
    return f"{socket.gethostname()}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseTiming:
    duration: float = 15.0  # leaseDurationSeconds: how long others wait after a renew
    renew_deadline: float = 10.0  # the leader steps down after failing to renew this long
    retry_period: float = 2.0  # between attempts, to acquire or to renew

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.duration:
            raise ValueError("need retry_period < renew_deadline < duration")


class LeaseConflict(Exception):
    """Somebody else wrote the Lease since we read it (409)."""


class LeaseStore(Protocol):
    async def get(self) -> JsonDict | None: ...
    async def create(self, lease: JsonDict) -> JsonDict: ...
    async def replace(self, lease: JsonDict) -> JsonDict: ...


class KubeLeases:
    """The Lease through the Kubernetes backend's own client (credentials, TLS, errors).

    Its calls go over connections of their own (the backend's dedicated ones, closed with
    the backend) with short timeouts: a renew must never wait behind a sweep's list
    calls, nor outlast the renew deadline.
    """

    TIMEOUT = (2.0, 4.0)  # connect, read

    def __init__(self, backend: KubernetesBackend, *, namespace: str, name: str = LEASE_NAME):
        self._backend = backend
        self._collection = LEASES.format(namespace=namespace)
        self._namespace = namespace
        self._name = name

    def close(self) -> None:
        """Nothing of its own to release: the connections are the backend's."""

    async def get(self) -> JsonDict | None:
        try:
            return await self._call("GET", f"{self._collection}/{self._name}")
        except BackendError as error:
            if error.status == 404:
                return None
            raise

    async def create(self, lease: JsonDict) -> JsonDict:
        lease = {**lease, "metadata": {"name": self._name, "namespace": self._namespace}}
        return await self._call("POST", self._collection, body=lease)

    async def replace(self, lease: JsonDict) -> JsonDict:
        return await self._call("PUT", f"{self._collection}/{self._name}", body=lease)

    async def _call(self, method: str, path: str, *, body: JsonDict | None = None) -> JsonDict:
        try:
            return await self._backend.call(
                method, path, body=body, dedicated=True, timeout=self.TIMEOUT
            )
        except BackendError as error:
            if error.status == 409:  # AlreadyExists on create, Conflict on update
                raise LeaseConflict(str(error)) from None
            raise


def micro_time(moment: datetime | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 with microseconds, in UTC."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for the Lease; while it holds it, `lead()` runs; when it loses it,
    `lead()` is cancelled (and awaited) at once, and it campaigns again."""

    def __init__(
        self,
        *,
        leases: LeaseStore,
        identity: str | None = None,
        timing: LeaseTiming | None = None,
    ) -> None:
        self.identity = identity or new_identity()
        self._leases = leases
        self._timing = timing or LeaseTiming()
        self._observed: JsonDict | None = None  # the Lease as last read or written
        self._observed_at = 0.0  # monotonic time its spec last changed, as we saw it
        self._last_read = 0.0  # when the latest read was sent (monotonic; 0: none yet)
        self._leading = False
        self.terms = 0  # how many times this process became leader

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def run(
        self,
        lead: Callable[[], Coroutine[Any, Any, None]],
        *,
        wind_down: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Until cancelled; on the way out the Lease is handed back if held (SIGTERM), so
        another replica takes over at once instead of after the lease duration.

        `wind_down`: on such a stop, awaited before the jobs are cancelled (work in flight
        may finish), for at most WIND_DOWN and never past the renew deadline. A lost
        Lease cancels the jobs at once."""
        try:
            while True:
                await self._lead(lead, since=await self._acquire(), wind_down=wind_down)
        finally:
            await self._release()

    async def _acquire(self) -> float:
        """Returns when the winning attempt began (the write is no older than that)."""
        while True:
            began = time.monotonic()
            if await self._attempt():
                log.info("leader: %s now holds the Lease", self.identity)
                return began
            await asyncio.sleep(self._pause())

    async def _lead(
        self,
        lead: Callable[[], Coroutine[Any, Any, None]],
        *,
        since: float,
        wind_down: Callable[[], Awaitable[None]] | None,
    ) -> None:
        self._leading = True
        self.terms += 1
        jobs = asyncio.create_task(lead())
        # The deadline counts from when a successful renew *began*: others count their
        # lease duration from no earlier than that write.
        renewed = since
        try:
            while True:
                await asyncio.wait({jobs}, timeout=self._timing.retry_period)
                if jobs.done():  # the jobs ended by themselves: a bug; lead again after a pause
                    log.error("leader: the jobs stopped (%r); starting again", jobs.exception())
                    await asyncio.sleep(self._timing.retry_period)
                    return
                began = time.monotonic()
                left = self._timing.renew_deadline - (began - renewed)
                ok = False
                if left > 0:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                    # cancellation of a stop that arrives as the attempt completes.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            ok = await self._attempt()
                if ok:
                    renewed = began
                    continue
                if self._holder() not in ("", self.identity):
                    log.warning("leader: %s took the Lease; stepping down", self._holder())
                    return
                if time.monotonic() - renewed >= self._timing.renew_deadline:
                    log.warning("leader: could not renew the Lease in time; stepping down")
                    return
        except asyncio.CancelledError:
            # Stopping, and the Lease is still ours until the renew deadline: a retry
            # period short of it, work in flight may finish.
            left = self._timing.renew_deadline - self._timing.retry_period
            grace = min(WIND_DOWN, left - (time.monotonic() - renewed))
            if wind_down is not None and grace > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await wind_down()
            raise
        finally:
            # Before anyone else may lead: the renew deadline is shorter than the lease.
            self._leading = False
            # The jobs' own end is absorbed, a stop arriving meanwhile is not.
            await cancel_all([jobs])

    async def _attempt(self) -> bool:
        """client-go's tryAcquireOrRenew: True when this process holds the Lease now."""
        try:
            return await self._try_acquire_or_renew()
        except BackendError as error:  # the API is away: this attempt failed, the next may not
            log.warning("leader: the Lease could not be read or written: %s", error)
            return False
        except (ValueError, KeyError, TypeError):  # a Lease we cannot read: never fatal
            log.exception("leader: unexpected answer about the Lease")
            return False

    def _pause(self) -> float:
        """A retry period (jittered), or less: until another holder's lease runs out."""
        pause = self._timing.retry_period * (1 + random.random() * JITTER)
        if self._holder() not in ("", self.identity):
            left = self._observed_at + self._timing.duration - time.monotonic()
            pause = min(pause, max(0.0, left) + 0.01)
        return pause

    async def _read(self) -> JsonDict | None:
        sent = time.monotonic()
        lease = await self._leases.get()
        if lease is not None:
            self._observe(lease, previous_read=self._last_read)
        self._last_read = sent
        return lease

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        lease = await self._read()
        if lease is None:
            spec = self._spec(now, acquired=now, transitions=0)
            try:
                created = await self._leases.create({"apiVersion": "coordination.k8s.io/v1",
                                                     "kind": "Lease", "spec": spec})  # fmt: skip
            except LeaseConflict:  # another candidate created it first
                return False
            self._observe(created)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and self._still_valid():
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            lease["spec"] = self._spec(now, acquired=spec.get("acquireTime") or now,
                                       transitions=transitions)  # fmt: skip
        else:
            lease["spec"] = self._spec(now, acquired=now, transitions=transitions + 1)
        try:
            written = await self._leases.replace(lease)  # carries the resourceVersion read
        except LeaseConflict:  # somebody wrote it meanwhile: see who, and lose this round
            await self._read()
            return False
        self._observe(written)
        return True

    def _spec(self, now: str, *, acquired: str, transitions: int) -> JsonDict:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self._timing.duration)),
            "acquireTime": acquired,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _observe(self, lease: JsonDict, *, previous_read: float = 0.0) -> None:
        """Note the Lease; a changed spec restarts its lease duration, dated as early as is
        safe. The change was written after our previous read was sent, and the writer
        stops leading a renew deadline after its renew began, so no later than
        `now + renew_deadline`: dating it from the previous read keeps our takeover after
        that as long as `now - previous_read` is at most half of `duration -
        renew_deadline` (the other half, 2.5 s, is the margin for the old leader's own
        delays). Otherwise it is dated now, as client-go does."""
        previous = (self._observed or {}).get("spec")
        if lease.get("spec") != previous:
            now = time.monotonic()
            slack = self._timing.duration - self._timing.renew_deadline
            close = previous is not None and previous_read > 0
            close = close and now - previous_read <= slack / 2
            self._observed_at = previous_read if close else now
        self._observed = lease

    def _still_valid(self) -> bool:
        return time.monotonic() < self._observed_at + self._timing.duration

    def _holder(self) -> str:
        return str(((self._observed or {}).get("spec") or {}).get("holderIdentity") or "")

    async def _release(self) -> None:
        """Hand the Lease back (no holder, a one-second lease): the next candidate to ask
        takes it at once. Only ever after the jobs have stopped."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                for _ in range(2):
                    if self._observed is None or self._holder() != self.identity:
                        return
                    try:
                        self._observe(await self._leases.replace(self._handed_back()))
                        log.info("leader: %s released the Lease", self.identity)
                        return
                    except LeaseConflict:
                        # A renew cut short by the stop may still have been written: what
                        # we read is then out of date. Read it again; ours, try once more.
                        fresh = await self._leases.get()
                        if fresh is None:
                            return
                        self._observe(fresh)
                log.warning("leader: the Lease was not released (it kept changing)")
        except (LeaseConflict, BackendError, TimeoutError) as error:
            # Somebody has it already, or the API is away: it expires by itself.
            log.warning("leader: the Lease was not released (%s)", type(error).__name__)

    def _handed_back(self) -> JsonDict:
        lease = dict(self._observed or {})
        spec = dict(lease.get("spec") or {})
        now = micro_time()
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
        lease["spec"] = spec
        return lease
