"""Leader election over a Kubernetes Lease, against the fake API server with k8s/'s RBAC.

Candidates are real `LeaderElector`s talking HTTP to the fake; "the leader dies" is a
Lease store that stops answering (a frozen or cut-off process), "SIGTERM" is the
election cancelled (what the manager's stop does). Assertions are about the Lease
the server holds and which candidate's jobs ran, never about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.manifests import ClusterConfig
from manager_bot.leader import LEASE_NAME, KubeLeases, LeaderElector, LeaseTiming, micro_time
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.waiting import until

JsonDict = dict[str, Any]
NAMESPACE = "hatchbot-system"
# Short, in the same proportions as the real 15 / 10 / 2 seconds.
FAST = LeaseTiming(duration=3.0, renew_deadline=2.0, retry_period=0.25)


def kube_backend(kubeconfig: Path, *, agent: str = "") -> KubernetesBackend:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    api_client = client.ApiClient(configuration)
    if agent:
        api_client.user_agent = agent  # the fake records it: which replica asked
    cluster = ClusterConfig(namespace="agents", image="hatchbot:test", router="istio",
                            public_url="https://bots.example.com")  # fmt: skip
    return KubernetesBackend(api_client=api_client, cluster=cluster, request_timeout=(2, 5))


class Severable:
    """A Lease store that can be cut off: from then on every call hangs, as for a
    process that froze or lost its network (it cannot release anything either)."""

    def __init__(self, inner: KubeLeases) -> None:
        self._inner = inner
        self.cut = False
        # The next write finds the Lease renewed by a write whose answer was never read
        # (a renew the stop cut short): the resourceVersion it carries is out of date.
        self.renewed_unseen = False

    async def _maybe_hang(self) -> None:
        if self.cut:
            await asyncio.Event().wait()

    async def get(self) -> JsonDict | None:
        await self._maybe_hang()
        return await self._inner.get()

    async def create(self, lease: JsonDict) -> JsonDict:
        await self._maybe_hang()
        return await self._inner.create(lease)

    async def replace(self, lease: JsonDict) -> JsonDict:
        await self._maybe_hang()
        if self.renewed_unseen:
            self.renewed_unseen = False
            current = await self._inner.get()
            assert current is not None
            current["spec"]["renewTime"] = micro_time()
            await self._inner.replace(current)
        return await self._inner.replace(lease)


class Candidate:
    """One replica's election, with jobs that only note when they start and stop."""

    def __init__(self, name: str, leases: Severable, timeline: list[str], timing: LeaseTiming):
        self.name = name
        self.leases = leases
        self.elector = LeaderElector(leases=leases, identity=f"{name}_0000", timing=timing)
        self._timeline = timeline
        self._task: asyncio.Task[None] | None = None

    def lead(self) -> Callable[[], Coroutine[Any, Any, None]]:
        async def jobs() -> None:
            self._timeline.append(f"{self.name} started")
            try:
                await asyncio.Event().wait()
            finally:
                self._timeline.append(f"{self.name} stopped")

        return jobs

    def start(self) -> None:
        self._task = asyncio.create_task(self.elector.run(self.lead()))

    async def stop(self) -> None:
        """What SIGTERM does: the election cancelled, the Lease handed back."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@pytest.fixture
async def lease_namespace(kube: FakeKubernetes) -> FakeKubernetes:
    kube.put_object("namespaces", {"metadata": {"name": NAMESPACE}})
    return kube


@pytest.fixture
async def candidates(
    lease_namespace: FakeKubernetes, kubeconfig: Path
) -> AsyncIterator[Callable[..., Candidate]]:
    made: list[tuple[Candidate, KubernetesBackend, KubeLeases]] = []
    timeline: list[str] = []

    def make(name: str, timing: LeaseTiming = FAST) -> Candidate:
        backend = kube_backend(kubeconfig, agent=name)
        leases = KubeLeases(backend, namespace=NAMESPACE)
        candidate = Candidate(name, Severable(leases), timeline, timing)
        made.append((candidate, backend, leases))
        return candidate

    yield make
    for candidate, backend, leases in made:
        await candidate.stop()
        leases.close()
        await backend.close()


def lease(kube: FakeKubernetes) -> JsonDict:
    found = kube.get_object("leases", NAMESPACE, LEASE_NAME)
    assert found is not None
    return found


def holder(kube: FakeKubernetes) -> str:
    found = kube.get_object("leases", NAMESPACE, LEASE_NAME)
    return str((found or {}).get("spec", {}).get("holderIdentity") or "")


async def renewals(kube: FakeKubernetes, count: int) -> None:
    """Until the Lease's renewTime has changed `count` more times."""
    seen = {lease(kube)["spec"]["renewTime"]}

    def renewed() -> bool:
        seen.add(lease(kube)["spec"]["renewTime"])
        return len(seen) > count

    await until(renewed, timeout=30)


async def test_of_two_candidates_exactly_one_leads_and_keeps_renewing(
    lease_namespace: FakeKubernetes, candidates: Callable[..., Candidate]
) -> None:
    kube = lease_namespace
    first, second = candidates("alpha"), candidates("beta")
    first.start()
    second.start()
    leader = await until(
        lambda: next((c for c in (first, second) if c.elector.is_leader), None), timeout=30
    )
    other = second if leader is first else first
    await renewals(kube, 3)

    assert holder(kube) == leader.elector.identity
    assert leader.elector.is_leader and not other.elector.is_leader
    assert other.elector.terms == 0  # the other never led, not even for a moment
    spec = lease(kube)["spec"]
    assert spec["leaseDurationSeconds"] == 3 and spec["leaseTransitions"] == 0
    assert spec["acquireTime"].endswith("Z") and "." in spec["acquireTime"]  # MicroTime
    # Both asked under the installed RBAC, and nothing was refused.
    assert [c for c in kube.access_checks if not c.allowed] == []


async def test_a_conflicting_write_makes_the_leader_re_read_and_step_down(
    lease_namespace: FakeKubernetes, candidates: Callable[..., Candidate]
) -> None:
    kube = lease_namespace
    leader = candidates("alpha")
    leader.start()
    await until(lambda: leader.elector.is_leader, timeout=30)
    # The leader's next renew (read, then write) is slow to arrive; between its read and
    # its write another replica writes the Lease.
    before = len(kube.requests)
    kube.inject_fault(status=None, verb="update", resource="leases", delay=1.0)
    await until(lambda: any(r.verb == "update" for r in kube.requests[before:]), timeout=30)
    taken = lease(kube)
    taken["spec"]["holderIdentity"] = "intruder_ffff"
    kube.replace_object("leases", taken)

    await until(lambda: not leader.elector.is_leader, timeout=30)
    refused = [r for r in kube.requests[before:] if r.verb == "update" and r.status == 409]
    assert refused, "the leader's renew carried the old resourceVersion"
    assert holder(kube) == "intruder_ffff"  # the loser did not overwrite the winner
    assert leader.elector.terms == 1
    await until(lambda: "alpha stopped" in leader._timeline, timeout=30)


async def test_when_the_leader_dies_the_other_takes_over_after_its_jobs_stopped(
    lease_namespace: FakeKubernetes, candidates: Callable[..., Candidate]
) -> None:
    kube = lease_namespace
    first = candidates("alpha")
    first.start()
    await until(lambda: first.elector.is_leader, timeout=30)
    second = candidates("beta")
    second.start()
    await renewals(kube, 2)
    acquired = lease(kube)["spec"]["acquireTime"]

    first.leases.cut = True  # frozen: no renew, no release
    await until(lambda: second.elector.is_leader, timeout=30)

    spec = lease(kube)["spec"]
    assert spec["holderIdentity"] == second.elector.identity
    assert spec["leaseTransitions"] == 1 and spec["acquireTime"] != acquired
    assert not first.elector.is_leader
    timeline = first._timeline
    # The old leader gave up (renew deadline) before the new one's jobs began (lease duration).
    assert timeline.index("alpha stopped") < timeline.index("beta started")


async def test_a_release_racing_an_unseen_renew_still_hands_the_lease_over(
    lease_namespace: FakeKubernetes, candidates: Callable[..., Candidate]
) -> None:
    patient = LeaseTiming(duration=600.0, renew_deadline=2.0, retry_period=0.25)
    first = candidates("alpha", patient)
    first.start()
    await until(lambda: first.elector.is_leader, timeout=30)
    second = candidates("beta", patient)
    second.start()
    first.leases.renewed_unseen = True  # the release meets a 409 first
    await first.stop()
    await until(lambda: second.elector.is_leader, timeout=30)


async def test_a_stopping_leader_hands_the_lease_over_at_once(
    lease_namespace: FakeKubernetes, candidates: Callable[..., Candidate]
) -> None:
    kube = lease_namespace
    # A lease so long that only a release explains a takeover before the wait gives up.
    patient = LeaseTiming(duration=600.0, renew_deadline=2.0, retry_period=0.25)
    first = candidates("alpha", patient)
    first.start()
    await until(lambda: first.elector.is_leader, timeout=30)
    second = candidates("beta", patient)
    second.start()
    await renewals(kube, 2)

    await first.stop()  # SIGTERM
    assert "alpha stopped" in first._timeline
    await until(lambda: second.elector.is_leader, timeout=30)
    spec = lease(kube)["spec"]
    assert spec["holderIdentity"] == second.elector.identity
    assert spec["leaseDurationSeconds"] == 600 and spec["leaseTransitions"] == 1
