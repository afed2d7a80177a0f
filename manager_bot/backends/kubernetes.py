"""KubernetesBackend: agents as Deployments, reached over HTTP on the event loop.

Only I/O lives here; objects come from `manifests`. The official `kubernetes`
package only loads the configuration (in-cluster account or kubeconfig); the
calls themselves are made on the event loop, with that configuration's host,
credentials, TLS, proxy and timeouts: the official client's threads (urllib3,
its serialisation, the hand-offs) cost the manager more CPU than the calls.
Direct calls go over `KeepAliveClient` (manager_bot/http_keepalive.py: a third of
aiohttp's CPU per call); through a proxy, aiohttp's client, which tunnels. Writes
are server-side apply with one field manager, so re-applying the same spec is a
no-op on the API server and an edit is a rolling update. Reads for health cost a
constant number of list calls whatever the number of agents.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import ssl
import time
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
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
from manager_bot.http_keepalive import (
    ConnectError,
    KeepAliveClient,
    TlsRefused,
    TransportError,
)

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

APPLY = "application/apply-patch+yaml"
# Connections to the API server at once: a sweep's three lists plus a burst of deploys'
# applies without queueing; the server multiplexes far more.
CONNECTIONS = 20
LEASE_CONNECTIONS = 2  # the leader Lease's own: never behind the agents' calls
CONNECT_RETRIES = 3  # urllib3's default, which the official client used
# How long credentials are reused before the configuration is asked again (and at once
# when the API answers 401): the refresh hook may run a kubeconfig `exec` plugin.
CREDENTIALS_FRESH_FOR = 10.0
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
        self._api = api_client  # kept for its configuration and headers; never called
        self._config: k8s.Configuration = api_client.configuration
        self._cluster = cluster
        self._manager = field_manager
        self._timeout = request_timeout
        self._base = self._config.host.rstrip("/")  # may carry a proxy's path prefix
        self._proxy = _proxy_for(self._config)
        self._proxy_headers = dict(getattr(self._config, "proxy_headers", None) or {})
        self._server_hostname = _server_hostname(self._config)
        self._tls: ssl.SSLContext | None = None
        self._tls_failure = ""  # why the TLS material could not be loaded, if it could not
        if self._base.startswith("https"):
            try:
                self._tls = _tls_context(self._config)
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                # Reported by every call, as the official client did: a doctor run or a
                # start-up must be able to say the cluster is unreachable.
                self._tls_failure = type(error).__name__
        self._sessions: dict[bool, aiohttp.ClientSession] = {}  # by `dedicated`
        self._direct: dict[bool, KeepAliveClient] = {}  # by `dedicated`
        self._credentials: dict[str, dict[str, Any]] = {}  # auth_settings(), as last asked
        self._credentials_at = -CREDENTIALS_FRESH_FOR  # monotonic; none asked yet
        self._credentials_renewal = asyncio.Lock()

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
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        direct, self._direct = list(self._direct.values()), {}
        for client in direct:
            await client.close()
        self._api.close()  # type: ignore[no-untyped-call]  # its pool was never used

    # -- Backend ---------------------------------------------------------------------

    async def apply(self, spec: AgentSpec) -> None:
        for manifest in agent_manifests(spec, self._cluster):
            await self._apply_one(manifest)

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
        await self._request("PATCH", path, body=body, content_type=MERGE)

    async def stop(self, agent_id: str) -> None:
        """Scale to zero; a Deployment that is gone runs nothing (reconcile re-creates it
        at zero replicas if the agent is kept)."""
        path = self._object_path("Deployment", agent_id) + "/scale"
        body = {"spec": {"replicas": 0}}
        try:
            await self._request("PATCH", path, body=body, content_type=MERGE)
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
            await self._delete_ignoring_missing(self._object_path(kind, agent_id))

    async def logs(self, agent_id: str, lines: int = 100) -> str:
        pods = await self._list("/api/v1", "pods", f"{AGENT_ID_LABEL}={agent_id},{MANAGED}")
        if not pods:
            return ""
        newest = max(pods, key=lambda pod: pod["metadata"].get("creationTimestamp", ""))
        path = f"/api/v1/namespaces/{self._cluster.namespace}/pods/{newest['metadata']['name']}/log"
        try:
            text: str = await self._request(
                "GET", path, query=[("tailLines", str(lines))], raw=True
            )
        except KubernetesError as error:
            if error.status == 400:  # the container has not started yet: no log to show
                return ""
            raise
        return text

    async def observe(self, agent_id: str) -> Observed | None:
        """The same mapping for one agent, with lists narrowed to its label. Its Secrets
        are listed only when it has no Deployment (what they would tell): one call fewer
        for every wait until a deploy is ready."""
        selector = f"{MANAGED},{AGENT_ID_LABEL}={agent_id}"
        return (await self._observe_selected(selector, secrets_if_missing=True)).get(agent_id)

    async def observe_all(self) -> dict[str, Observed]:
        """Three list calls (Deployments, Pods, Secrets), whatever the number of agents."""
        return await self._observe_selected(MANAGED)

    async def _observe_selected(
        self, selector: str, *, secrets_if_missing: bool = False
    ) -> dict[str, Observed]:
        lists = [
            self._list("/apis/apps/v1", "deployments", selector),
            self._list("/api/v1", "pods", selector),
        ]
        if not secrets_if_missing:
            lists.append(self._list("/api/v1", "secrets", selector))
        deployments, pods, *listed = await asyncio.gather(*lists)
        secrets = listed[0] if listed else []
        if secrets_if_missing and not deployments:
            secrets = await self._list("/api/v1", "secrets", selector)
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
        body = await self._request("GET", "/version")
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
        await self._request("PATCH", path, body=probe, query=query, content_type=APPLY)

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
        answer = await self._request("POST", path, body=review)
        return bool(answer.get("status", {}).get("allowed"))

    # -- the manager's own objects (leader.py's Lease) -------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: JsonDict | None = None,
        dedicated: bool = False,
        timeout: tuple[float, float] | None = None,
    ) -> JsonDict:
        """One API call through this client (its credentials, TLS and error mapping).

        `dedicated`: over connections of its own (the leader Lease's), so its calls never
        queue behind a sweep's lists; `timeout`: (connect, read) seconds instead of the
        agents' calls' own.
        """
        answer: JsonDict = await self._request(
            method, path, body=body, timeout=timeout, dedicated=dedicated
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

    # -- I/O ---------------------------------------------------------------------------

    def _object_path(self, kind: str, agent_id: str) -> str:
        prefix, plural = PATHS[kind]
        return f"{prefix}/namespaces/{self._cluster.namespace}/{plural}/{object_name(agent_id)}"

    async def _apply_one(self, manifest: JsonDict) -> None:
        prefix, plural = PATHS[manifest["kind"]]
        name = manifest["metadata"]["name"]
        path = f"{prefix}/namespaces/{self._cluster.namespace}/{plural}/{name}"
        query = [("fieldManager", self._manager), ("force", "true")]
        # raw: the answer (the whole object as applied) is not read, so not parsed either.
        await self._request("PATCH", path, body=manifest, query=query, content_type=APPLY, raw=True)

    async def _list(self, prefix: str, plural: str, selector: str) -> list[JsonDict]:
        path = f"{prefix}/namespaces/{self._cluster.namespace}/{plural}"
        body = await self._request("GET", path, query=[("labelSelector", selector)])
        items: list[JsonDict] = body.get("items", [])
        return items

    async def _delete_ignoring_missing(self, path: str) -> None:
        try:
            await self._request("DELETE", path)
        except BackendError as error:
            # 404: already gone, which is what delete wants.
            if getattr(error, "status", None) != 404:
                raise

    def _route_kind_installed(self, kind: str) -> bool:
        return ROUTE_KINDS.get(self._cluster.router) == kind

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        raw: bool = False,
        timeout: tuple[float, float] | None = None,
        dedicated: bool = False,
    ) -> Any:
        """One call on the event loop: the parsed JSON answer (`raw`: the text), an
        error status as `_api_error`, any transport failure as status 0."""
        if self._tls_failure:
            raise KubernetesError(
                f"cannot reach the Kubernetes API ({self._tls_failure})", status=0
            )
        exchange = functools.partial(
            self._send, method, path, body=body, query=query, content_type=content_type,
            timeout=timeout, dedicated=dedicated,
        )  # fmt: skip
        status, data = await exchange(renew=False)
        if status == 401:  # a token rotated or expired since it was asked for: ask again
            status, data = await exchange(renew=True)
        if status >= 400:
            raise _api_error(method, path, status, data)
        text = data.decode()
        return text if raw else json.loads(text or "{}")

    async def _send(
        self, method: str, path: str, *, body: Any, query: list[tuple[str, str]] | None,
        content_type: str | None, timeout: tuple[float, float] | None, dedicated: bool,
        renew: bool,
    ) -> tuple[int, bytes]:  # fmt: skip
        """One HTTP exchange: the status and the body; a transport failure as status 0."""
        query = list(query or [])
        headers = self._headers(query, await self._auth_settings(renew=renew))
        proxy_headers = None
        if self._proxy and self._proxy_headers:
            if not self._base.startswith("https"):  # plain HTTP: the headers ride along
                headers.update(self._proxy_headers)
            else:  # HTTPS is tunnelled: they go with the CONNECT
                proxy_headers = self._proxy_headers
        payload = None
        if body is not None:
            # apply-patch+yaml takes JSON too: JSON is YAML.
            payload = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        connect, read = timeout or self._timeout
        exchange = functools.partial(
            self._exchange_direct if self._proxy is None else self._exchange_proxied,
            method, self._base + path, query=query, payload=payload, headers=headers,
            proxy_headers=proxy_headers, connect=connect, read=read, dedicated=dedicated,
        )  # fmt: skip
        retries = _connect_retries(self._config)
        while True:
            try:
                return await exchange()
            except (ConnectError, aiohttp.ClientConnectorError) as error:
                # The request was never sent: try again, as urllib3 did (not for TLS
                # failures, which a retry does not change).
                if retries > 0 and not isinstance(error, TlsRefused | aiohttp.ClientSSLError):
                    retries -= 1
                    continue
                raise _unreachable(error) from None
            except (TransportError, aiohttp.ClientError, OSError, TimeoutError) as error:
                raise _unreachable(error) from None

    async def _exchange_direct(
        self, method: str, url: str, *, query: list[tuple[str, str]], payload: bytes | None,
        headers: dict[str, str], proxy_headers: dict[str, str] | None, connect: float,
        read: float, dedicated: bool,
    ) -> tuple[int, bytes]:  # fmt: skip
        """Over the keep-alive client. Its total bounds a response that trickles in and
        the wait for a free connection, as aiohttp's does below."""
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        return await self._direct_client(dedicated=dedicated).request(
            method, url, body=payload or b"", headers=headers,
            timeout=connect + 2 * read, connect_timeout=connect,
        )  # fmt: skip

    async def _exchange_proxied(
        self, method: str, url: str, *, query: list[tuple[str, str]], payload: bytes | None,
        headers: dict[str, str], proxy_headers: dict[str, str] | None, connect: float,
        read: float, dedicated: bool,
    ) -> tuple[int, bytes]:  # fmt: skip
        """Through the proxy, with aiohttp's client. sock_read bounds each wait for bytes,
        as urllib3's read timeout did; the total bounds a response that trickles in, and
        the wait for a free connection."""
        limits = aiohttp.ClientTimeout(
            total=connect + 2 * read, sock_connect=connect, sock_read=read
        )
        async with self._session(dedicated=dedicated).request(
            method,
            url,
            params=query or None,
            data=payload,
            headers=headers,
            timeout=limits,
            proxy=self._proxy,
            proxy_headers=proxy_headers,
            server_hostname=self._server_hostname,
        ) as response:
            return response.status, await response.read()

    async def _auth_settings(self, *, renew: bool = False) -> dict[str, dict[str, Any]]:
        """The configuration's `auth_settings()`, asked again every CREDENTIALS_FRESH_FOR
        seconds or when `renew`. Asked on a thread: its refresh hook re-reads a rotated
        service-account token, or runs a kubeconfig's `exec` plugin (a cloud CLI's
        login, which can take seconds) once the token has expired."""
        async with self._credentials_renewal:
            age = time.monotonic() - self._credentials_at
            if renew or age >= CREDENTIALS_FRESH_FOR:
                asked = time.monotonic()
                settings = await asyncio.to_thread(self._config.auth_settings)
                self._credentials = cast(dict[str, dict[str, Any]], settings)
                self._credentials_at = asked
            return self._credentials

    def _headers(
        self, query: list[tuple[str, str]], settings: dict[str, dict[str, Any]]
    ) -> dict[str, str]:
        """The official client's headers: its defaults (User-Agent), then the credentials
        `settings` from `auth_settings()`."""
        headers = {key: str(value) for key, value in self._api.default_headers.items()}
        headers["Accept"] = "application/json"
        cookies = [self._api.cookie] if self._api.cookie else []
        for setting in settings.values():
            value = setting.get("value")
            if value is None:
                continue
            where, key = setting.get("in"), str(setting.get("key"))
            if where == "header":
                headers[key] = str(value)
            elif where == "query":
                query.append((key, str(value)))
            elif where == "cookie":
                cookies.append(f"{key}={value}")
        if "authorization" not in {key.lower() for key in headers}:
            username, password = self._config.username, self._config.password
            if username or password:
                headers["Authorization"] = aiohttp.BasicAuth(
                    username or "", password or ""
                ).encode()
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        return headers

    def _direct_client(self, *, dedicated: bool) -> KeepAliveClient:
        """Made on first use; `dedicated` ones for the Lease. It sends no Accept-Encoding,
        as the official client sent none."""
        client = self._direct.get(dedicated)
        if client is None:
            client = self._direct[dedicated] = KeepAliveClient(
                limit=LEASE_CONNECTIONS if dedicated else CONNECTIONS,
                ssl_context=self._tls,
                server_hostname=self._server_hostname,
            )
        return client

    def _session(self, *, dedicated: bool) -> aiohttp.ClientSession:
        """Made on first use, on the running loop; `dedicated` ones for the Lease; only
        with a proxy (aiohttp tunnels HTTPS through it)."""
        session = self._sessions.get(dedicated)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=LEASE_CONNECTIONS if dedicated else CONNECTIONS,
                ssl=self._tls if self._tls is not None else True,
            )
            # trust_env off: the configuration already resolved the proxy environment.
            # No Accept-Encoding, as the official client sent none: decompressing lists
            # would cost the event loop what the cluster network saves.
            session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                skip_auto_headers=("Accept-Encoding",),
            )
            self._sessions[dedicated] = session
        return session


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


def _unreachable(error: BaseException) -> KubernetesError:
    """Only the exception's type (a failed connection's: ConnectionRefusedError, an
    SSLCertVerificationError): its text may name the URL with its query."""
    if isinstance(error, ConnectError) and error.__cause__ is not None:
        error = error.__cause__
    return KubernetesError(f"cannot reach the Kubernetes API ({type(error).__name__})", status=0)


def _tls_context(config: k8s.Configuration) -> ssl.SSLContext:
    """What urllib3 built from the configuration: its CA (file or data) or the system's,
    the client certificate, and verification unless `verify_ssl` is off."""
    context = ssl.create_default_context(
        cafile=config.ssl_ca_cert or None,
        cadata=getattr(config, "ca_cert_data", None) or None,
    )
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif getattr(config, "assert_hostname", None) is False:
        context.check_hostname = False
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file or None)
    return context


def _server_hostname(config: k8s.Configuration) -> str | None:
    """The name the server's certificate is checked against (and sent as SNI), when it
    is not the host's: kubeconfig's tls-server-name, or an `assert_hostname` string."""
    name = getattr(config, "tls_server_name", None)
    asserted = getattr(config, "assert_hostname", None)
    if not name and isinstance(asserted, str):
        name = asserted
    return name or None


def _proxy_for(config: k8s.Configuration) -> str | None:
    proxy: str | None = getattr(config, "proxy", None) or None
    if proxy is None or _bypasses_proxy(config.host, getattr(config, "no_proxy", None) or ""):
        return None
    if urlsplit(proxy).scheme.lower() not in ("http", "https"):
        # SOCKS needs a connector aiohttp does not have; going direct would be a surprise.
        raise ValueError(f"unsupported proxy scheme: {urlsplit(proxy).scheme}")
    return proxy


def _bypasses_proxy(url: str, no_proxy: str) -> bool:
    """The official client's `no_proxy` rules: `*`, a host or domain suffix (with or
    without its port), or a network an IP host is in."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    netloc = parts.netloc.lower().rpartition("@")[2]
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
        entry = entry.lstrip(".")
        if any(name == entry or name.endswith("." + entry) for name in (host, netloc)):
            return True
    return False


def _connect_retries(config: k8s.Configuration) -> int:
    """`retries` as urllib3 read it for connection failures: a count, a `Retry`, or
    None for its default."""
    retries = getattr(config, "retries", None)
    if retries is None:
        return CONNECT_RETRIES
    if isinstance(retries, bool):
        return CONNECT_RETRIES if retries else 0
    if isinstance(retries, int):
        return max(0, retries)
    for field in ("connect", "total"):
        value = getattr(retries, field, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, value)
    return CONNECT_RETRIES


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
