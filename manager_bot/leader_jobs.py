"""The jobs only one replica may run, and how a replica comes to run them.

With several replicas (webhook mode on Kubernetes, leader.py) every replica serves
users, and the one holding the Lease also runs: the scheduler's jobs (health
sweeps, reconcile, the notice outbox, forgetting idle chats), broadcast sending
(any replica records a broadcast; the leader picks it up), and, on taking over,
what a dead replica left unfinished. Losing the Lease stops all of it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from manager_bot.config import ManagerSettings
from manager_bot.db.session import is_sqlite
from manager_bot.leader import KubeLeases, LeaderElector, LeaseTiming, leader_elected
from manager_bot.scheduler import Scheduler
from manager_bot.services.agent_locks import AgentLocks
from manager_bot.services.broadcast import Broadcaster
from manager_bot.services.recovery import Recovery
from runtime.tasks import cancel_all

if TYPE_CHECKING:
    from manager_bot.app import ManagerParts

log = logging.getLogger(__name__)
PICKUP_INTERVAL = 2.0  # seconds between the leader's looks for broadcasts to send
# A replica may die while the leader lives: its users' operations are found this often.
RECOVERY_INTERVAL = 60.0


def agent_locks_for(settings: ManagerSettings) -> AgentLocks:
    """Held across replicas when several can run (on their PostgreSQL), else in-process."""
    url = settings.database_url.get_secret_value()
    shared = leader_elected(settings) and not is_sqlite(url)
    return AgentLocks(shared_url=url if shared else None)


class LeaderJobs:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        broadcaster: Broadcaster,
        recovery: Recovery,
        pickup_interval: float = PICKUP_INTERVAL,
        recovery_interval: float = RECOVERY_INTERVAL,
    ) -> None:
        self._scheduler = scheduler
        self._broadcaster = broadcaster
        self._recovery = recovery
        self._pickup = pickup_interval
        self._recovery_interval = recovery_interval

    async def lead(self) -> None:
        """While this replica leads (until cancelled)."""
        self._scheduler.start()
        # What the previous leader (or any replica that died) left half done: converged,
        # users told.
        catch_up = [
            asyncio.create_task(self._scheduler.reconcile()),
            asyncio.create_task(self._recover()),
        ]
        try:
            while True:
                try:
                    resumed = await self._broadcaster.resume_unfinished()
                except Exception:  # the database is away: look again next time
                    log.exception("looking for broadcasts to send failed")
                else:
                    if resumed:
                        log.info("sending broadcasts %s", resumed)
                await asyncio.sleep(self._pickup)
        finally:
            # At once: sends stop now, however long the catch-up takes to end.
            await asyncio.gather(
                cancel_all(catch_up), self._scheduler.halt(), self._broadcaster.halt()
            )

    async def wind_down(self) -> None:
        """Stopping while leading: the broadcast's sends in flight finish (see leader.py)."""
        await self._broadcaster.wind_down()

    async def _recover(self) -> None:
        while True:
            try:
                finished = await self._recovery.finish_abandoned()
            except Exception:  # the database is away: next time
                log.exception("finishing abandoned operations failed")
            else:
                if finished:
                    log.info("finished %d operations whose replica had stopped", finished)
            await asyncio.sleep(self._recovery_interval)


async def elect_and_lead(parts: ManagerParts, *, timing: LeaseTiming | None = None) -> None:
    """Campaign for the Lease in the manager's namespace; lead while it is held. Until
    cancelled (the manager stopping), and then the Lease is handed back."""
    from manager_bot.backends.kubernetes import KubernetesBackend

    if not isinstance(parts.backend, KubernetesBackend):
        raise TypeError("leader election needs the Kubernetes backend")
    leases = KubeLeases(parts.backend, namespace=parts.settings.k8s_manager_namespace)
    elector = LeaderElector(leases=leases, timing=timing)
    jobs = LeaderJobs(
        scheduler=parts.scheduler, broadcaster=parts.broadcaster, recovery=parts.recovery
    )
    log.info("leader election: campaigning as %s", elector.identity)
    try:
        await elector.run(jobs.lead, wind_down=jobs.wind_down)
    finally:
        with contextlib.suppress(Exception):
            leases.close()
