"""Desired state wins: one level-triggered path that makes the backend match the database.

Reconcile, the health sweep's repairs and the "give up" on a crash loop all go
through `converge`, which takes the agent's lock and reads its row again inside
it: a repair never acts on a row the user has just changed (stopped, edited,
deleted). Whatever failed before (a scale-down, a rollout, a Secret write)
converges here, because `converge` compares what should be with what is, not
what was last asked.

Deleting is the dangerous direction. An object the database does not know is
removed only if it carries this installation's stamp and has been an orphan for
`orphan_grace`: a manager started on an empty, wrong or restored database (whose
installation id differs, or which knows no agent at all) deletes nothing, and
admins are told once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from manager_bot.backends.base import Backend, BackendError, Observed, ObservedState
from manager_bot.db.models import DesiredState, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.deployer import Deployer

log = logging.getLogger(__name__)
ORPHAN_GRACE = timedelta(minutes=15)  # an orphan must stay one this long before it goes
RUNS = (ObservedState.RUNNING, ObservedState.STARTING, ObservedState.CRASH_LOOPING)


@dataclass(frozen=True)
class ReconcileReport:
    applied: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def needs_apply(
    *, should_run: bool, seen: Observed | None, fingerprint: str | None, installation: str = ""
) -> bool:
    """The difference between desired and observed that an apply removes."""
    if seen is None or seen.state is ObservedState.MISSING:
        return True
    if installation and seen.installation != installation:
        return True  # an object from before the stamp: stamp it (it is ours: the row says so)
    if not should_run:
        return seen.state in RUNS  # a Stop or a ban that did not reach the backend
    if seen.state is ObservedState.STOPPED:
        return True
    # An edit or a rotation whose rollout failed: the workload runs an old config.
    return fingerprint is not None and seen.fingerprint not in (None, fingerprint)


Alert = Callable[[str], Awaitable[None]]


async def log_only(text: str) -> None:
    log.warning("%s", text)


class Reconciler:
    def __init__(
        self, *, database: Database, backend: Backend, deployer: Deployer,
        orphan_grace: timedelta = ORPHAN_GRACE, alert: Alert = log_only,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:  # fmt: skip
        self._db = database
        self._backend = backend
        self._deployer = deployer
        self._locks = deployer.locks  # the same locks as users' actions
        self._grace = orphan_grace
        self._alert = alert
        self._clock = clock
        self._orphans_since: dict[str, datetime] = {}
        self._alerted: set[str] = set()

    async def reconcile(self) -> ReconcileReport:
        """Every agent: apply exactly the difference; remove what the database no longer
        wants. Raises BackendError when the backend cannot be read at all."""
        async with self._db.reading() as session:
            repos = Repositories(session)
            wanted = [agent.id for agent in await repos.agents.all_active()]
            known = {agent.id for agent in await repos.agents.all()}
        observed = await self._backend.observe_all()
        applied, removed, failed = [], [], []
        for agent_id in wanted:
            try:
                if await self.converge(agent_id, observed.get(agent_id)):
                    applied.append(agent_id)
            except BackendError as error:
                log.warning("reconcile could not converge agent %s: %s", agent_id, error)
                failed.append(agent_id)
        for agent_id in await self._removable(observed, wanted=set(wanted), known=known):
            try:
                if await self.converge(agent_id, observed[agent_id]):
                    removed.append(agent_id)
            except BackendError as error:
                log.warning("reconcile could not remove agent %s: %s", agent_id, error)
                failed.append(agent_id)
        if applied or removed:
            await self._deployer.audit_system(
                "reconcile", None, f"applied {applied}, removed {removed}"
            )
        # Telegram's side (commands, description, a Managed Bot's access) that a 429 or an
        # outage kept from being set when it was asked for.
        profiles = await self._deployer.sync_pending_profiles()
        if profiles:
            log.info("reconcile set the Telegram profile of %s", profiles)
        return ReconcileReport(tuple(applied), tuple(removed), tuple(failed))

    async def _removable(
        self, observed: dict[str, Observed], *, wanted: set[str], known: set[str]
    ) -> list[str]:
        """What may be deleted: agents the database says are deleted, and orphans of this
        installation past their grace period. Never anything when the database knows no
        agent at all, never another installation's (or an unstamped) object."""
        ours = self._deployer.installation_id
        now = self._clock()
        removable, foreign = [], []
        for agent_id in sorted(set(observed) - wanted):
            seen = observed[agent_id]
            if agent_id in known:  # deleted in the database: ours to remove
                removable.append(agent_id)
            elif not known or not ours or seen.installation != ours:
                foreign.append(agent_id)
            else:
                since = self._orphans_since.setdefault(agent_id, now)
                if now - since >= self._grace:
                    removable.append(agent_id)
        for agent_id in set(self._orphans_since) - set(observed):
            del self._orphans_since[agent_id]  # gone meanwhile
        if foreign:
            await self._alert_once(foreign, empty_database=not known)
        return removable

    async def _alert_once(self, foreign: list[str], *, empty_database: bool) -> None:
        key = ",".join(sorted(foreign))
        if key in self._alerted:
            return
        self._alerted.add(key)
        why = (
            "the database knows no agent at all (a new, wrong or lost database?)"
            if empty_database
            else "they are not stamped with this installation's id"
        )
        await self._alert(
            f"Reconcile found {len(foreign)} agent(s) the database does not know and "
            f"deleted nothing: {why}. First ones: {', '.join(foreign[:5])}."
        )

    async def converge(self, agent_id: str, seen: Observed | None) -> bool:
        """Make one agent's workload what its row says now; True if anything was done.
        `seen` is what the caller observed; the row is read again under the lock."""
        async with self._locks.hold(agent_id):
            agent = await self._deployer.stored(agent_id)
            if agent is None or agent.desired_state == DesiredState.DELETED:
                if seen is None:
                    return False
                await self._backend.delete(agent_id)
                return True
            spec = self._deployer.spec_for(agent)
            fingerprint = self._backend.fingerprint(spec)
            if not needs_apply(
                should_run=spec.running, seen=seen, fingerprint=fingerprint,
                installation=spec.installation,
            ):  # fmt: skip
                return False
            await self._backend.apply(spec)
            return True

    async def repair_webhook(self, agent_id: str) -> None:
        """Set the webhook again (deleted, on the local backend), if the agent still runs."""
        async with self._locks.hold(agent_id):
            agent = await self._deployer.stored(agent_id)
            if agent is None or agent.desired_state != DesiredState.RUNNING:
                return
            await self._deployer.point_webhook(
                self._deployer.spec_for(agent), drop_pending_updates=False
            )
        await self._deployer.audit_system("repair", agent_id, "webhook set again")

    async def give_up(self, agent_id: str, reason: str) -> bool:
        """Stop an agent that has crashed for too long; its owner resumes it when fixed.
        False if the row no longer wants it running (nothing to give up on)."""
        async with self._locks.hold(agent_id):
            if not await self._deployer.mark_stopped(agent_id):
                return False
            try:
                await self._backend.stop(agent_id)
            except BackendError as error:  # stored as stopped: `converge` scales it down
                log.warning("could not stop crash-looping agent %s: %s", agent_id, error)
        await self._deployer.audit_system("give_up", agent_id, reason[:500])
        return True
