"""The cluster behind the API: the deployment and replicaset controllers, and a kubelet.

A Deployment gets a ReplicaSet per pod template (named `<deployment>-<hash>`,
labelled `pod-template-hash`) and that ReplicaSet gets the pods, as on a real
cluster. New pods wait in `ContainerCreating` until a test plays the kubelet
(`mark_ready`, `mark_crash_looping`, ...) or `auto_ready` is on. A rollout
with the `Recreate` strategy removes the old pods at once; `RollingUpdate`
keeps them until the new ones are ready. Statuses (ReplicaSet, Deployment)
are recomputed from the pods after every change, as the controllers would.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.kubernetes.fieldmanager import now
from tests.fakes.kubernetes.resources import Resource, resource_by_plural
from tests.fakes.kubernetes.store import NAME_ALPHABET, Store

JsonDict = dict[str, Any]
PodState = Callable[[JsonDict], JsonDict]
CONTROLLER = "kube-controller-manager"
KUBELET = "kubelet"
REVISION = "deployment.kubernetes.io/revision"
DEPLOYMENTS = resource_by_plural("deployments")
REPLICA_SETS = resource_by_plural("replicasets")
PODS = resource_by_plural("pods")
_WAITING_FOR_LOGS = {
    "ContainerCreating": "ContainerCreating",
    "PodInitializing": "PodInitializing",
    "ImagePullBackOff": "trying and failing to pull image",
    "ErrImagePull": "trying and failing to pull image",
    "InvalidImageName": "trying and failing to pull image",
    "CreateContainerConfigError": "CreateContainerConfigError",
}


@dataclass
class PodLog:
    current: str = ""
    previous: str | None = None


class Kubelet:
    """Reacts to store changes like the controllers; tests drive the pods' fate."""

    def __init__(self, store: Store, *, auto_ready: Callable[[], bool]) -> None:
        self.store = store
        self._auto_ready = auto_ready
        self.logs: dict[tuple[str, str, str], PodLog] = {}
        self._queue: list[tuple[str, str]] = []
        self._syncing = False
        store.listeners.append(self._on_change)

    # -- the tests' kubelet ----------------------------------------------------------------

    def set_pods(self, namespace: str, deployment: str, state: PodState) -> None:
        """Give every pod of the Deployment's current template the status `state` makes."""
        with self.store.lock:
            live = self.store.require(DEPLOYMENTS, namespace, deployment)
            for pod in self.current_pods(live):
                self.store.write_status(PODS, pod, state(pod), manager=KUBELET)

    def current_pods(self, deployment: JsonDict) -> list[JsonDict]:
        current = self._current_replica_set(deployment)
        return self.store.dependents(current["metadata"]["uid"], PODS) if current else []

    def pods_of(self, deployment: JsonDict) -> list[JsonDict]:
        pods: list[JsonDict] = []
        for replica_set in self.store.dependents(deployment["metadata"]["uid"], REPLICA_SETS):
            pods += self.store.dependents(replica_set["metadata"]["uid"], PODS)
        return pods

    def log_of(self, namespace: str, pod: str, container: str) -> PodLog:
        return self.logs.setdefault((namespace, pod, container), PodLog())

    # -- reacting to changes ---------------------------------------------------------------

    def _on_change(self, event: str, resource: Resource, obj: JsonDict) -> None:
        metadata = obj["metadata"]
        if resource == DEPLOYMENTS and event != "DELETED":
            self._enqueue(metadata["namespace"], metadata["name"])
        elif resource == PODS:
            if event == "DELETED":
                for key in [
                    k for k in self.logs if k[:2] == (metadata["namespace"], metadata["name"])
                ]:
                    del self.logs[key]
            owner = self._owner(obj, "ReplicaSet")
            replica_set = (
                self.store.get(REPLICA_SETS, metadata["namespace"], owner) if owner else None
            )
            deployment = self._owner(replica_set, "Deployment") if replica_set else None
            if deployment:
                self._enqueue(metadata["namespace"], deployment)

    def _enqueue(self, namespace: str, name: str) -> None:
        if (namespace, name) not in self._queue:
            self._queue.append((namespace, name))
        if self._syncing:
            return
        self._syncing = True
        try:
            while self._queue:
                self._sync(*self._queue.pop(0))
        finally:
            self._syncing = False

    def _sync(self, namespace: str, name: str) -> None:
        deployment = self.store.get(DEPLOYMENTS, namespace, name)
        if deployment is None:
            return
        current = self._current_replica_set(deployment) or self._new_replica_set(deployment)
        desired = int(deployment["spec"].get("replicas", 1))
        current = self._scale_replica_set(current, desired)
        pods = self._reconcile_pods(current, desired)
        ready = sum(pod_is_ready(p) for p in pods)
        rolling = deployment["spec"].get("strategy", {}).get("type") != "Recreate"
        keep_old = rolling and desired > 0 and ready < desired
        for old in self.store.dependents(deployment["metadata"]["uid"], REPLICA_SETS):
            if old["metadata"]["uid"] != current["metadata"]["uid"]:
                self._retire(old, keep_pods=keep_old)
        deployment = self._annotate_revision(deployment, current)
        self._write_deployment_status(deployment, current)

    # -- ReplicaSets -----------------------------------------------------------------------

    def _current_replica_set(self, deployment: JsonDict) -> JsonDict | None:
        wanted = template_hash(deployment)
        for replica_set in self.store.dependents(deployment["metadata"]["uid"], REPLICA_SETS):
            if replica_set["metadata"].get("labels", {}).get("pod-template-hash") == wanted:
                return replica_set
        return None

    def _new_replica_set(self, deployment: JsonDict) -> JsonDict:
        metadata, spec = deployment["metadata"], deployment["spec"]
        digest = template_hash(deployment)
        revisions = [
            int(rs["metadata"].get("annotations", {}).get(REVISION, "0"))
            for rs in self.store.dependents(metadata["uid"], REPLICA_SETS)
        ]
        template = copy.deepcopy(spec.get("template", {}))
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = digest
        selector = copy.deepcopy(spec.get("selector", {}))
        selector.setdefault("matchLabels", {})["pod-template-hash"] = digest
        body = {
            "metadata": {
                "name": f"{metadata['name']}-{digest}",
                "namespace": metadata["namespace"],
                "labels": template["metadata"]["labels"],
                "annotations": {
                    REVISION: str(max(revisions, default=0) + 1),
                    "deployment.kubernetes.io/desired-replicas": str(spec.get("replicas", 1)),
                    "deployment.kubernetes.io/max-replicas": str(spec.get("replicas", 1)),
                },
                "ownerReferences": [owner_reference(deployment)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        return self.store.create(REPLICA_SETS, metadata["namespace"], body, manager=CONTROLLER)

    def _scale_replica_set(self, replica_set: JsonDict, replicas: int) -> JsonDict:
        if replica_set["spec"].get("replicas") == replicas:
            return replica_set
        changed = copy.deepcopy(replica_set)
        changed["spec"]["replicas"] = replicas
        return self.store.update(REPLICA_SETS, replica_set, changed, manager=CONTROLLER)

    def _retire(self, replica_set: JsonDict, *, keep_pods: bool) -> None:
        pods = self.store.dependents(replica_set["metadata"]["uid"], PODS)
        if not keep_pods:
            for pod in pods:
                self.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            pods = []
        replica_set = self._scale_replica_set(replica_set, len(pods))
        self._write_replica_set_status(replica_set, pods)

    def _reconcile_pods(self, replica_set: JsonDict, desired: int) -> list[JsonDict]:
        pods = self.store.dependents(replica_set["metadata"]["uid"], PODS)
        pods.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
        while len(pods) > desired:
            doomed = pods.pop()
            self.store.delete(PODS, doomed["metadata"]["namespace"], doomed["metadata"]["name"])
        while len(pods) < desired:
            pods.append(self._new_pod(replica_set))
        self._write_replica_set_status(replica_set, pods)
        return pods

    def _write_replica_set_status(self, replica_set: JsonDict, pods: list[JsonDict]) -> None:
        ready = sum(pod_is_ready(p) for p in pods)
        status = _without_zeros(
            {
                "replicas": len(pods),
                "fullyLabeledReplicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
        )
        status["observedGeneration"] = replica_set["metadata"].get("generation", 1)
        live = self.store.get(
            REPLICA_SETS, replica_set["metadata"]["namespace"], replica_set["metadata"]["name"]
        )
        if live is not None and live.get("status") != status:
            self.store.write_status(REPLICA_SETS, live, status, manager=CONTROLLER)

    # -- pods ------------------------------------------------------------------------------

    def _new_pod(self, replica_set: JsonDict) -> JsonDict:
        template = replica_set["spec"].get("template", {})
        template_metadata = template.get("metadata", {})
        suffix = "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))
        body = {
            "metadata": {
                "name": f"{replica_set['metadata']['name']}-{suffix}",
                "namespace": replica_set["metadata"]["namespace"],
                "labels": copy.deepcopy(template_metadata.get("labels", {})),
                "ownerReferences": [owner_reference(replica_set)],
            },
            "spec": {**copy.deepcopy(template.get("spec", {})), "nodeName": "fake-node"},
        }
        if template_metadata.get("annotations"):
            body["metadata"]["annotations"] = copy.deepcopy(template_metadata["annotations"])
        pod = self.store.create(
            PODS, replica_set["metadata"]["namespace"], body, manager=CONTROLLER
        )
        state = running if self._auto_ready() else pending
        return self.store.write_status(PODS, pod, state(pod), manager=KUBELET)

    # -- the Deployment --------------------------------------------------------------------

    def _annotate_revision(self, deployment: JsonDict, current: JsonDict) -> JsonDict:
        revision = current["metadata"].get("annotations", {}).get(REVISION)
        if (
            revision is None
            or deployment["metadata"].get("annotations", {}).get(REVISION) == revision
        ):
            return deployment
        changed = copy.deepcopy(deployment)
        changed["metadata"].setdefault("annotations", {})[REVISION] = revision
        return self.store.update(DEPLOYMENTS, deployment, changed, manager=CONTROLLER)

    def _write_deployment_status(self, deployment: JsonDict, current: JsonDict) -> None:
        spec = deployment["spec"]
        desired = int(spec.get("replicas", 1))
        pods = self.pods_of(deployment)
        updated = self.store.dependents(current["metadata"]["uid"], PODS)
        available = sum(pod_is_ready(p) for p in pods)
        status = _without_zeros(
            {
                "replicas": len(pods),
                "updatedReplicas": len(updated),
                "readyReplicas": available,
                "availableReplicas": available,
                "unavailableReplicas": max(desired - available, 0),
            }
        )
        status = {"observedGeneration": deployment["metadata"].get("generation", 1), **status}
        old_conditions = {c["type"]: c for c in deployment.get("status", {}).get("conditions", [])}
        minimum = desired - max_unavailable(spec, desired)
        complete = len(updated) == desired == available and len(pods) == desired
        name = current["metadata"]["name"]
        status["conditions"] = [
            _condition(old_conditions, "Available", available >= minimum,
                       "MinimumReplicasAvailable" if available >= minimum else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if available >= minimum
                       else "Deployment does not have minimum availability."),
            _condition(old_conditions, "Progressing", True,
                       "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                       f'ReplicaSet "{name}" has successfully progressed.' if complete
                       else f'ReplicaSet "{name}" is progressing.'),
        ]  # fmt: skip
        if deployment.get("status") != status:
            self.store.write_status(DEPLOYMENTS, deployment, status, manager=CONTROLLER)

    @staticmethod
    def _owner(obj: JsonDict | None, kind: str) -> str | None:
        for reference in (obj or {}).get("metadata", {}).get("ownerReferences", []):
            if reference.get("kind") == kind and reference.get("controller"):
                return str(reference.get("name"))
        return None


# -- pod states ------------------------------------------------------------------------------


def pending(pod: JsonDict) -> JsonDict:
    return _status(
        pod, phase="Pending", ready=False, state={"waiting": {"reason": "ContainerCreating"}}
    )


def running(pod: JsonDict) -> JsonDict:
    return _status(pod, phase="Running", ready=True, state={"running": {"startedAt": now()}})


def crash_looping(reason: str, restarts: int, last_terminated_reason: str) -> PodState:
    def state(pod: JsonDict) -> JsonDict:
        container = _first_container(pod)
        message = f"back-off 5m0s restarting failed container={container} pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
        exit_code = 137 if last_terminated_reason == "OOMKilled" else 1
        stamp = now()
        return _status(
            pod,
            phase="Running",
            ready=False,
            state={"waiting": {"reason": reason, "message": message}},
            restarts=restarts,
            last_state={
                "terminated": {
                    "exitCode": exit_code,
                    "reason": last_terminated_reason,
                    "startedAt": stamp,
                    "finishedAt": stamp,
                    "containerID": f"containerd://{secrets.token_hex(32)}",
                }
            },
        )

    return state


def image_pull_error(reason: str) -> PodState:
    def state(pod: JsonDict) -> JsonDict:
        image = (pod["spec"].get("containers") or [{}])[0].get("image", "")
        message = (
            f'Back-off pulling image "{image}"'
            if "BackOff" in reason
            else f'failed to pull image "{image}"'
        )
        return _status(
            pod,
            phase="Pending",
            ready=False,
            state={"waiting": {"reason": reason, "message": message}},
        )

    return state


def _status(
    pod: JsonDict,
    *,
    phase: str,
    ready: bool,
    state: JsonDict,
    restarts: int = 0,
    last_state: JsonDict | None = None,
) -> JsonDict:
    started = pod.get("status", {}).get("startTime") or now()
    flag = "True" if ready else "False"
    conditions = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True" if phase == "Running" or ready else "False",
        },
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": flag, **({} if ready else {"reason": "ContainersNotReady"})},
        {
            "type": "ContainersReady",
            "status": flag,
            **({} if ready else {"reason": "ContainersNotReady"}),
        },
        {"type": "PodScheduled", "status": "True"},
    ]
    for condition in conditions:
        condition.update(lastProbeTime=None, lastTransitionTime=started)
    containers = []
    for container in pod["spec"].get("containers", []):
        containers.append(
            {
                "name": container.get("name", ""),
                "image": container.get("image", ""),
                "imageID": ""
                if "waiting" in state and restarts == 0
                else f"docker.io/library/{container.get('image', '')}@sha256:{'0' * 64}",
                "ready": ready,
                "started": "running" in state,
                "restartCount": restarts,
                "state": copy.deepcopy(state),
                "lastState": copy.deepcopy(last_state or {}),
            }
        )
    status: JsonDict = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "10.0.0.10",
        "hostIPs": [{"ip": "10.0.0.10"}],
        "startTime": started,
        "containerStatuses": containers,
        "qosClass": qos_class(pod["spec"]),
    }
    if phase == "Running":
        ip = _pod_ip(pod)
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return status


def _first_container(pod: JsonDict) -> str:
    return str((pod["spec"].get("containers") or [{}])[0].get("name", ""))


def _pod_ip(pod: JsonDict) -> str:
    digest = hashlib.sha256(pod["metadata"]["uid"].encode()).digest()
    return f"10.244.{digest[0]}.{digest[1] % 254 + 1}"


def qos_class(spec: JsonDict) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(kind)
        and (r.get("requests") or {}).get(kind, (r.get("limits") or {}).get(kind))
        == (r.get("limits") or {}).get(kind)
        for r in resources
        for kind in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def pod_is_ready(pod: JsonDict) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def waiting_reason_blocking_logs(pod: JsonDict, container: str) -> str | None:
    """Why `kubectl logs` cannot answer yet (the container never started), or None."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        if status.get("name") != container:
            continue
        reason = status.get("state", {}).get("waiting", {}).get("reason")
        if reason in _WAITING_FOR_LOGS and not status.get("restartCount"):
            return _WAITING_FOR_LOGS[reason]
    return None


# -- helpers ---------------------------------------------------------------------------------


def template_hash(deployment: JsonDict) -> str:
    """Like the controller's pod-template-hash: stable per template, 10 safe characters."""
    template = json.dumps(deployment["spec"].get("template", {}), sort_keys=True)
    number = int.from_bytes(hashlib.sha256(template.encode()).digest()[:8], "big")
    digits = []
    for _ in range(10):
        number, index = divmod(number, len(NAME_ALPHABET))
        digits.append(NAME_ALPHABET[index])
    return "".join(digits)


def owner_reference(owner: JsonDict) -> JsonDict:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def max_unavailable(spec: JsonDict, replicas: int) -> int:
    strategy = spec.get("strategy", {})
    if strategy.get("type") == "Recreate":
        return 0
    value = strategy.get("rollingUpdate", {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.floor(replicas * int(value[:-1]) / 100)
    return int(value)


def _condition(
    old: dict[str, JsonDict], kind: str, value: bool, reason: str, message: str
) -> JsonDict:
    status = "True" if value else "False"
    previous = old.get(kind)
    if previous and previous.get("status") == status and previous.get("reason") == reason:
        return previous
    stamp = now()
    transition = (
        previous["lastTransitionTime"] if previous and previous.get("status") == status else stamp
    )
    return {
        "type": kind,
        "status": status,
        "lastUpdateTime": stamp,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }


def _without_zeros(status: JsonDict) -> JsonDict:
    return {k: v for k, v in status.items() if v}
