"""KubernetesBackend: agents as Deployments, reached through the official client.

Only I/O lives here; objects come from `manifests`. Every call runs off the
event loop (the client is synchronous). Writes are server-side apply with one
field manager, so re-applying the same spec is a no-op on the API server and
an edit is a rolling update. Reads for health cost a constant number of list
calls whatever the number of agents.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from manager_bot.backends.base import (
    AGENT_ID_LABEL,
    INSTALLATION_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    AgentSpec,
    BackendError,
    Observed,
    ObservedState,
    object_name,
)
from manager_bot.backends.manifests import (
    CONFIG_HASH,
    SERVICE_PORT,
    ClusterConfig,
    agent_manifests,
    config_hash,
)
from manager_bot.config import ManagerSettings

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]
T = TypeVar("T")

APPLY = "application/apply-patch+yaml"
KUBE_THREADS = 3  # observe_all's three lists at once
MERGE = "application/merge-patch+json"
REQUEST_TIMEOUT = (5, 30)  # connect, read
MANAGED = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
# Waiting reasons that mean the pod will not come up by itself.
STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
# (group/version path prefix, plural) per kind we create.
PATHS: dict[str, tuple[str, str]] = {
    "Secret": ("/api/v1", "secrets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "VirtualService": ("/apis/networking.istio.io/v1", "virtualservices"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
}

ROUTE_KINDS = {"istio": "VirtualService", "gateway-api": "HTTPRoute"}


def required_access(router: str) -> frozenset[tuple[str, str, str]]:
    """(verb, API group, resource) this backend needs in the agents namespace.

    k8s/'s Role grants exactly this (tests/install checks it) and `doctor` asks
    the cluster about each. A server-side apply that creates is authorised as
    `create` too; observe lists; stop scales; logs reads a pod's log.
    """
    kinds = [k for k in PATHS if k not in ROUTE_KINDS.values() or ROUTE_KINDS.get(router) == k]
    access = {
        (verb, _group(PATHS[kind][0]), PATHS[kind][1])
        for kind in kinds
        for verb in ("create", "patch", "delete")
    }
    access |= {("list", "apps", "deployments"), ("list", "", "pods"), ("list", "", "secrets")}
    access |= {("patch", "apps", "deployments/scale"), ("get", "", "pods/log")}
    return frozenset(access)


def _group(prefix: str) -> str:
    """'/api/v1' -> '' (core); '/apis/apps/v1' -> 'apps'."""
    parts = prefix.strip("/").split("/")
    return "" if parts[0] == "api" else parts[1]


class KubernetesBackend:
    """Implements `Backend` against one namespace of one cluster."""

    def __init__(
        self,
        *,
        api_client: k8s.ApiClient,
        cluster: ClusterConfig,
        field_manager: str = "hatchbot",
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        self._api = api_client
        self._cluster = cluster
        self._manager = field_manager
        self._timeout = request_timeout
        # The client is synchronous, so calls run in threads; a few threads, not the
        # default pool's six: each competes with the event loop for the GIL, and past
        # two or three they add switching, not throughput.
        self._threads = ThreadPoolExecutor(max_workers=KUBE_THREADS, thread_name_prefix="kube")

    @classmethod
    def from_settings(cls, settings: ManagerSettings) -> KubernetesBackend:
        """In-cluster service account, else KUBECONFIG / ~/.kube/config."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        cluster = ClusterConfig(
            namespace=settings.k8s_namespace,
            image=settings.agent_image,
            router=settings.k8s_router,
            public_url=settings.public_url or "",
            gateway=settings.k8s_gateway,
            ingress_namespace=settings.k8s_ingress_namespace,
            manager_namespace=settings.k8s_manager_namespace,
            cluster_cidrs=tuple(settings.k8s_cluster_cidrs),
        )
        return cls(api_client=k8s.ApiClient(configuration), cluster=cluster)

    @property
    def cluster(self) -> ClusterConfig:
        return self._cluster

    async def close(self) -> None:
        await self._run(self._api.close)
        self._threads.shutdown(wait=False)

    # -- Backend ---------------------------------------------------------------------

    async def apply(self, spec: AgentSpec) -> None:
        for manifest in agent_manifests(spec, self._cluster):
            await self._run(self._apply_one, manifest)

    def fingerprint(self, spec: AgentSpec) -> str | None:
        return config_hash(spec)

    async def restart(self, agent_id: str) -> None:
        """What `kubectl rollout restart` does: a new pod-template annotation."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}
                }
            }
        }
        path = self._object_path("Deployment", agent_id)
        await self._run(self._request, "PATCH", path, body=body, content_type=MERGE)

    async def stop(self, agent_id: str) -> None:
        """Scale to zero; a Deployment that is gone runs nothing (reconcile re-creates it
        at zero replicas if the agent is kept)."""
        path = self._object_path("Deployment", agent_id) + "/scale"
        body = {"spec": {"replicas": 0}}
        try:
            await self._run(self._request, "PATCH", path, body=body, content_type=MERGE)
        except KubernetesError as error:
            if error.status != 404:
                raise

    async def delete(self, agent_id: str) -> None:
        # The Secret goes last: while it is there the agent is observed, so a delete that
        # failed midway is finished by reconcile. The NetworkPolicy outlives the pods'
        # Deployment (and the namespace's default-deny policy covers any still stopping).
        for kind in (
            "VirtualService",
            "HTTPRoute",
            "Service",
            "Deployment",
            "NetworkPolicy",
            "Secret",
        ):
            if kind in ("VirtualService", "HTTPRoute") and not self._route_kind_installed(kind):
                continue
            await self._run(self._delete_ignoring_missing, self._object_path(kind, agent_id))

    async def logs(self, agent_id: str, lines: int = 100) -> str:
        pods = await self._run(
            self._list, "/api/v1", "pods", f"{AGENT_ID_LABEL}={agent_id},{MANAGED}"
        )
        if not pods:
            return ""
        newest = max(pods, key=lambda pod: pod["metadata"].get("creationTimestamp", ""))
        path = f"/api/v1/namespaces/{self._cluster.namespace}/pods/{newest['metadata']['name']}/log"
        try:
            text: str = await self._run(
                self._request, "GET", path, query=[("tailLines", str(lines))], raw=True
            )
        except KubernetesError as error:
            if error.status == 400:  # the container has not started yet: no log to show
                return ""
            raise
        return text

    async def observe(self, agent_id: str) -> Observed | None:
        """The same mapping for one agent, with lists narrowed to its label."""
        return (await self._observe_selected(f"{MANAGED},{AGENT_ID_LABEL}={agent_id}")).get(
            agent_id
        )

    async def observe_all(self) -> dict[str, Observed]:
        """Three list calls (Deployments, Pods, Secrets), whatever the number of agents."""
        return await self._observe_selected(MANAGED)

    async def _observe_selected(self, selector: str) -> dict[str, Observed]:
        deployments, pods, secrets = await asyncio.gather(
            self._run(self._list, "/apis/apps/v1", "deployments", selector),
            self._run(self._list, "/api/v1", "pods", selector),
            self._run(self._list, "/api/v1", "secrets", selector),
        )
        pods_by_agent: dict[str, list[JsonDict]] = {}
        for pod in pods:
            agent_id = pod["metadata"].get("labels", {}).get(AGENT_ID_LABEL)
            if agent_id:
                pods_by_agent.setdefault(agent_id, []).append(pod)
        observed: dict[str, Observed] = {}
        for deployment in deployments:
            agent_id = deployment["metadata"].get("labels", {}).get(AGENT_ID_LABEL)
            if agent_id:
                observed[agent_id] = self._observe(
                    agent_id, deployment, pods_by_agent.get(agent_id, [])
                )
        for secret in secrets:
            agent_id = secret["metadata"].get("labels", {}).get(AGENT_ID_LABEL)
            if agent_id and agent_id not in observed:
                observed[agent_id] = Observed(
                    agent_id=agent_id, state=ObservedState.MISSING, reason="no Deployment",
                    installation=secret["metadata"].get("labels", {}).get(INSTALLATION_LABEL),
                )  # fmt: skip
        return observed

    # -- preflight (python -m manager_bot doctor) ------------------------------------

    async def server_version(self) -> str:
        body = await self._run(self._request, "GET", "/version")
        return str(body.get("gitVersion", "unknown"))

    async def check_namespace(self) -> None:
        """A dry-run apply in the agents namespace: 404 if the namespace is missing."""
        probe = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hatchbot-doctor-probe", "namespace": self._cluster.namespace},
        }
        path = f"/api/v1/namespaces/{self._cluster.namespace}/secrets/hatchbot-doctor-probe"
        query = [("fieldManager", self._manager), ("dryRun", "All")]
        await self._run(self._request, "PATCH", path, body=probe, query=query, content_type=APPLY)

    async def can_i(
        self, verb: str, group: str, resource: str, *, namespace: str | None = None,
        name: str = "",
    ) -> bool:  # fmt: skip
        """SelfSubjectAccessReview: may this identity do `verb` on `resource` (named `name`)
        in the agents namespace, or in `namespace`?"""
        plural, _, subresource = resource.partition("/")
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace or self._cluster.namespace,
                    "verb": verb,
                    "group": group,
                    "resource": plural,
                    "subresource": subresource,
                    "name": name,
                }
            },
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        answer = await self._run(self._request, "POST", path, body=review)
        return bool(answer.get("status", {}).get("allowed"))

    # -- the manager's own objects (leader.py's Lease) -------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: JsonDict | None = None,
        executor: ThreadPoolExecutor | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> JsonDict:
        """One API call through this client (its credentials, TLS and error mapping).

        `executor`: the caller's own thread, so its calls never queue behind a sweep's
        lists; `timeout`: (connect, read) seconds instead of the agents' calls' own.
        """
        call = functools.partial(self._request, method, path, body=body, timeout=timeout)
        answer: JsonDict = await asyncio.get_running_loop().run_in_executor(
            executor or self._threads, call
        )
        return answer

    # -- mapping ---------------------------------------------------------------------

    def _observe(self, agent_id: str, deployment: JsonDict, pods: list[JsonDict]) -> Observed:
        spec, status = deployment.get("spec", {}), deployment.get("status", {})
        name = object_name(agent_id)
        probe_url = (
            f"{self._cluster.probe_base}/{name}"
            if self._cluster.probe_base
            else f"http://{name}.{self._cluster.namespace}.svc.cluster.local:{SERVICE_PORT}"
        )
        restarts = sum(
            container.get("restartCount", 0)
            for pod in pods
            for container in pod.get("status", {}).get("containerStatuses", [])
        )
        since = _parse_time(deployment["metadata"].get("creationTimestamp"))

        template = spec.get("template", {}).get("metadata", {})
        fingerprint = (template.get("annotations") or {}).get(CONFIG_HASH)
        installation = (deployment["metadata"].get("labels") or {}).get(INSTALLATION_LABEL)

        def seen(state: ObservedState, reason: str | None = None) -> Observed:
            return Observed(
                agent_id=agent_id,
                state=state,
                reason=reason,
                restarts=restarts,
                since=since,
                probe_url=probe_url,
                fingerprint=fingerprint,
                installation=installation,
            )

        if spec.get("replicas", 1) == 0:
            return seen(ObservedState.STOPPED)
        if status.get("readyReplicas", 0) >= 1 and _rolled_out(deployment):
            return seen(ObservedState.RUNNING)
        stuck = _stuck_reason(pods)
        if stuck is not None:
            return seen(ObservedState.CRASH_LOOPING, stuck)
        return seen(ObservedState.STARTING)

    # -- I/O (sync, always called through _run) ----------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(function, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._threads, call)

    def _object_path(self, kind: str, agent_id: str) -> str:
        prefix, plural = PATHS[kind]
        return f"{prefix}/namespaces/{self._cluster.namespace}/{plural}/{object_name(agent_id)}"

    def _apply_one(self, manifest: JsonDict) -> None:
        prefix, plural = PATHS[manifest["kind"]]
        name = manifest["metadata"]["name"]
        path = f"{prefix}/namespaces/{self._cluster.namespace}/{plural}/{name}"
        query = [("fieldManager", self._manager), ("force", "true")]
        self._request("PATCH", path, body=manifest, query=query, content_type=APPLY)

    def _list(self, prefix: str, plural: str, selector: str) -> list[JsonDict]:
        path = f"{prefix}/namespaces/{self._cluster.namespace}/{plural}"
        body = self._request("GET", path, query=[("labelSelector", selector)])
        items: list[JsonDict] = body.get("items", [])
        return items

    def _delete_ignoring_missing(self, path: str) -> None:
        try:
            self._request("DELETE", path)
        except BackendError as error:
            # 404: already gone, which is what delete wants.
            if getattr(error, "status", None) != 404:
                raise

    def _route_kind_installed(self, kind: str) -> bool:
        return ROUTE_KINDS.get(self._cluster.router) == kind

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        raw: bool = False,
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        serialized = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                *serialized[:2],
                header_params=serialized[2],
                body=serialized[3],
                _request_timeout=timeout or self._timeout,
            )
            response.read()  # type: ignore[no-untyped-call]
        except k8s.ApiException as error:
            raise _api_error(method, path, error.status or 0, error.body) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise KubernetesError(
                f"cannot reach the Kubernetes API ({type(error).__name__})", status=0
            ) from None
        if response.status >= 400:
            raise _api_error(method, path, response.status, response.data)
        text = response.data.decode() if isinstance(response.data, bytes) else str(response.data)
        return text if raw else json.loads(text or "{}")


class KubernetesError(BackendError):
    """The API answered with an error (`status`), or could not be reached (status 0)."""

    def __init__(self, message: str, *, status: int) -> None:
        retryable = status == 0 or status >= 500 or status in (409, 429)
        super().__init__(message, retryable=retryable, status=status)


def _api_error(method: str, path: str, status: int, body: Any) -> KubernetesError:
    """A message from the Status' reason only: the body may echo a Secret we sent."""
    reason = ""
    try:
        parsed = json.loads(body.decode() if isinstance(body, bytes) else body or "{}")
        reason = str(parsed.get("reason") or "")
    except (ValueError, AttributeError):
        reason = ""
    kind = path.rstrip("/").split("/")[-2] if path.count("/") > 2 else path
    return KubernetesError(
        f"Kubernetes API answered {status} {reason} to {method} {kind}".strip(), status=status
    )


def _rolled_out(deployment: JsonDict) -> bool:
    """The controller has seen the latest spec and no pod of an older template is left
    (as `kubectl rollout status` decides): a ready pod then runs what we applied, not
    the configuration before an edit."""
    status = deployment.get("status", {})
    updated = int(status.get("updatedReplicas", 0))
    observed = int(status.get("observedGeneration", 0))
    wanted = int(deployment.get("spec", {}).get("replicas", 1))
    return (
        observed >= int(deployment["metadata"].get("generation", 0))
        and updated >= wanted
        and int(status.get("replicas", 0)) <= updated
    )


def _stuck_reason(pods: list[JsonDict]) -> str | None:
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses", []):
            waiting = container.get("state", {}).get("waiting", {}).get("reason")
            if waiting not in STUCK_REASONS:
                continue
            terminated = container.get("lastState", {}).get("terminated", {}).get("reason")
            restarts = container.get("restartCount", 0)
            reason = "OOMKilled" if terminated == "OOMKilled" else waiting
            return f"{reason} (restarted {restarts} times)" if restarts else reason
    return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
