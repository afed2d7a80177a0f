"""A fake Kubernetes API server on 127.0.0.1, driven by the real `kubernetes` client.

Serves the subset Hatchbot uses (see kube_resources.RESOURCES) with the real
server's semantics (see kube_store), discovery complete enough for `kubectl
get` and `kubectl apply --server-side`, a request log, fault injection, RBAC
denials, and a kubelet that tests play: mark a Deployment ready, crash-looping,
OOMKilled or failing to pull its image, and give its pod a log. Optionally it
serves HTTPS (a CA made at start; client certificates may be required) and
checks the bearer token, which a test may rotate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import hashlib
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fakes.kube_resources import (
    Resource,
    api_group_list_document,
    api_versions_document,
    find_resource,
    resource_by_plural,
    resource_list_document,
    version_document,
)
from tests.fakes.kube_store import (
    ApiError,
    Store,
    json_merge_patch,
    json_patch,
    not_found,
    now,
    strategic_merge_patch,
)
from tests.fakes.loopback import serve_on_loopback

JsonDict = dict[str, Any]
APPLY_PATCH = "application/apply-patch+yaml"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@dataclass
class KubeRequest:
    """One API request, in RBAC terms (verb, group, resource) plus what we need to debug."""

    verb: str
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    content_type: str | None
    status: int = 200
    user_agent: str = ""  # which client asked (tests give each replica its own)

    @property
    def is_apply(self) -> bool:
        return self.content_type == APPLY_PATCH


@dataclass(frozen=True)
class AccessCheck:
    """One authorization decision, as RBAC sees it (`resource` may be `pods/log`)."""

    verb: str
    group: str
    resource: str
    namespace: str | None
    allowed: bool


@dataclass
class _Fault:
    status: int | None
    verb: str | None
    resource: str | None
    namespace: str | None
    name: str | None
    delay: float
    times: int
    message: str

    def matches(self, request: KubeRequest) -> bool:
        return (
            self.times > 0
            and self.verb in (None, request.verb)
            and self.resource in (None, request.resource)
            and self.namespace in (None, request.namespace)
            and self.name in (None, request.name)
        )


@dataclass
class _Route:
    resource: Resource
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A throwaway CA: a server certificate for 127.0.0.1, client certificates."""

    def __init__(self, name: str = "fake-kubernetes-ca") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._name = subject
        self.cert = (
            self._builder(subject, self._key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )  # fmt: skip
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool) -> Certificate:
        """A server certificate (SAN IP 127.0.0.1 and localhost) or a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .issuer_name(self._name)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Certificate(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    @staticmethod
    def _builder(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        moment = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(moment - datetime.timedelta(hours=1))
            .not_valid_after(moment + datetime.timedelta(days=1))
        )


class FakeKubernetes:
    """The fake API server. Use as `async with FakeKubernetes() as kube:` or `with ...`.

    It runs its own event loop in a thread: the real client is synchronous, and
    a test (or a benchmark) may call it without blocking the server. A lock
    keeps the store consistent between the server and test-facing calls.

    `tls`: HTTPS with a certificate from `self.authority` (made at start), which
    `write_kubeconfig` names; `client_certificates`: only clients with a certificate
    that CA signed are served (implies `tls`); `require_token`: every request must
    carry `Authorization: Bearer <self.token>`, else 401 (`rotate_token` changes it).
    """

    def __init__(
        self,
        *,
        auto_ready: bool = False,
        tls: bool = False,
        client_certificates: bool = False,
        require_token: bool = False,
    ) -> None:
        self.url = ""
        self.auto_ready = auto_ready
        self.tls = tls or client_certificates
        self.client_certificates = client_certificates
        self.require_token = require_token
        self.authority: CertificateAuthority | None = None
        self.client_certificate: Certificate | None = None  # what write_kubeconfig gives
        self.store = Store()
        self.requests: list[KubeRequest] = []
        self.token = secrets.token_hex(16)
        self._faults: list[_Fault] = []
        self._delays_over = asyncio.Event()  # made again on the server's loop at start
        self._denied: set[tuple[str, str, str]] = set()
        # With Roles granted, RBAC is enforced: only what a rule allows passes.
        self._roles: list[JsonDict] = []
        self.access_checks: list[AccessCheck] = []
        self._logs: dict[tuple[str, str], str] = {}
        # A FakeKubelet, when one runs the Deployments: told of changes, asked for logs.
        self._kubelet_wake: Callable[[], None] | None = None
        self._kubelet_logs: Callable[[str, str], str | None] | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------

    def start_in_thread(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Kubernetes API server did not start")

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._start_site())
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _start_site(self) -> None:
        self._delays_over = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        if not self.tls:
            self._runner, self.url = await serve_on_loopback(app)
            return
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._server_tls())
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"

    def _server_tls(self) -> ssl.SSLContext:
        self.authority = CertificateAuthority()
        served = self.authority.issue("kube-apiserver", server=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with _pem_files(served) as (cert_file, key_file):
            context.load_cert_chain(cert_file, key_file)
        if self.client_certificates:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=self.authority.cert_pem.decode())
            self.client_certificate = self.authority.issue("hatchbot", server=False)
        return context

    def rotate_token(self) -> str:
        """Accept a new bearer token, and no longer the old one (as a rotated
        service-account token or an exec plugin's next credential)."""
        self.token = secrets.token_hex(16)
        return self.token

    async def start(self) -> None:
        await asyncio.to_thread(self.start_in_thread)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_thread)

    async def __aenter__(self) -> FakeKubernetes:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __enter__(self) -> FakeKubernetes:
        self.start_in_thread()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_thread()

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for the real client and for `kubectl --kubeconfig`."""
        cluster: JsonDict = {"server": self.url}
        user: JsonDict = {"token": self.token}
        if self.authority is not None:
            cluster["certificate-authority-data"] = _base64(self.authority.cert_pem)
        if self.client_certificate is not None:
            user["client-certificate-data"] = _base64(self.client_certificate.cert_pem)
            user["client-key-data"] = _base64(self.client_certificate.key_pem)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "hatchbot", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hatchbot"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- test-facing API ------------------------------------------------------------

    def objects(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[JsonDict]:
        with self.lock:
            found = self.store.list(resource_by_plural(resource), namespace, label_selector)
            return copy.deepcopy(found)

    def get_object(self, resource: str, namespace: str | None, name: str) -> JsonDict | None:
        with self.lock:
            obj = self.store.get(resource_by_plural(resource), namespace, name)
            return copy.deepcopy(obj) if obj is not None else None

    def put_object(self, resource: str, obj: JsonDict) -> JsonDict:
        """Create behind the API's back (setup, orphans); fills metadata like a create."""
        kind = _resource_of(resource, obj)
        namespace = obj.get("metadata", {}).get("namespace")
        with self.lock:
            created = self.store.create(kind, namespace, obj)
            if kind.plural == "deployments":
                self._deployment_changed(created)
            return copy.deepcopy(created)

    def replace_object(self, resource: str, obj: JsonDict) -> JsonDict:
        """Update behind the API's back (an edit by someone else): spec and metadata."""
        kind = resource_by_plural(resource)
        metadata = obj["metadata"]
        with self.lock:
            live = self.store.require(kind, metadata.get("namespace"), metadata["name"])
            stored = self.store.replace_stored(kind, live, obj)
            self._written(kind, stored)
            return copy.deepcopy(stored)

    def delete_object(self, resource: str, namespace: str | None, name: str) -> None:
        """Delete behind the API's back (drift for reconcile to repair)."""
        kind = resource_by_plural(resource)
        with self.lock:
            self.store.delete(kind, namespace, name)
            if kind.plural == "deployments" and namespace:
                self._remove_pods(namespace, name)

    def clear_requests(self) -> None:
        self.requests.clear()

    def inject_fault(
        self,
        *,
        status: int | None = 500,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        delay: float = 0.0,
        times: int = 1,
        message: str = "injected",
    ) -> None:
        """Matching requests fail with a Status of `status` (None: only delayed)."""
        self._faults.append(_Fault(status, verb, resource, namespace, name, delay, times, message))

    def clear_faults(self) -> None:
        self._faults.clear()

    def release_delayed(self) -> None:
        """End the delays of injected faults now: requests held by one go on at once."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_delayed)

    def _release_delayed(self) -> None:
        self._delays_over.set()
        self._delays_over = asyncio.Event()  # later delays wait again

    def deny(self, *, verb: str, resource: str, group: str = "") -> None:
        """RBAC says no: 403 for that verb and resource, and SelfSubjectAccessReview agrees."""
        self._denied.add((verb, group, resource))

    def grant(self, role: JsonDict) -> None:
        """Enforce RBAC from now on, allowing what this Role (bound to the caller) allows.

        As in the real server, a Role allows only in its own namespace, and a
        server-side apply that creates an object needs `create` as well as `patch`.
        """
        self._roles.append(copy.deepcopy(role))

    def allows(
        self, verb: str, group: str, resource: str, namespace: str | None, name: str | None = None
    ) -> bool:
        if (verb, group, resource) in self._denied or (
            verb,
            group,
            resource.split("/")[0],
        ) in self._denied:
            return False
        if not self._roles or ((group, resource) in _EVERYONE_MAY_CREATE and verb == "create"):
            return True
        return any(
            role["metadata"].get("namespace") == namespace
            and _rule_allows(rule, verb, group, resource, name)
            for role in self._roles
            for rule in role.get("rules", [])
        )

    def attach_kubelet(
        self, *, on_change: Callable[[], None], logs: Callable[[str, str], str | None]
    ) -> None:
        """A FakeKubelet runs pods from now on: the methods below no longer make any."""
        self._kubelet_wake, self._kubelet_logs = on_change, logs

    def detach_kubelet(self) -> None:
        self._kubelet_wake = self._kubelet_logs = None

    # -- the kubelet, played by tests ---------------------------------------------

    def mark_ready(self, namespace: str, deployment: str) -> None:
        self._set_pod_state(namespace, deployment, ready=True)

    def mark_crash_looping(
        self,
        namespace: str,
        deployment: str,
        *,
        reason: str = "CrashLoopBackOff",
        restarts: int = 5,
        last_terminated_reason: str = "Error",
    ) -> None:
        self._set_pod_state(
            namespace,
            deployment,
            ready=False,
            waiting=reason,
            restarts=restarts,
            terminated=last_terminated_reason,
        )

    def mark_oom_killed(self, namespace: str, deployment: str, *, restarts: int = 3) -> None:
        self.mark_crash_looping(
            namespace, deployment, restarts=restarts, last_terminated_reason="OOMKilled"
        )

    def mark_image_pull_error(
        self, namespace: str, deployment: str, reason: str = "ImagePullBackOff"
    ) -> None:
        self._set_pod_state(namespace, deployment, ready=False, waiting=reason, phase="Pending")

    def set_pod_log(self, namespace: str, pod_or_deployment: str, text: str) -> None:
        with self.lock:
            self._set_pod_log(namespace, pod_or_deployment, text)

    def _set_pod_log(self, namespace: str, pod_or_deployment: str, text: str) -> None:
        pods = self._pods_of(namespace, pod_or_deployment) or [
            p
            for p in self.store.list(resource_by_plural("pods"), namespace)
            if p["metadata"]["name"] == pod_or_deployment
        ]
        for pod in pods:
            self._logs[(namespace, pod["metadata"]["name"])] = text

    # -- HTTP ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.require_token and request.headers.get("Authorization") != f"Bearer {self.token}":
            # As the real server: authentication fails before anything else is looked at.
            error = ApiError(401, "Unauthorized", "Unauthorized")
            return web.json_response(error.status(), status=401)
        path = request.path.rstrip("/") or "/"
        discovery = self._discovery(path)
        if discovery is not None:
            return web.json_response(discovery)
        try:
            route = self._route(path)
        except ApiError as error:
            return web.json_response(error.status(), status=error.code)
        record = KubeRequest(
            verb=_verb(request, route),
            group=route.resource.group,
            version=route.version,
            resource=route.resource.plural,
            subresource=route.subresource,
            namespace=route.namespace,
            name=route.name,
            content_type=request.content_type if request.can_read_body else None,
            user_agent=request.headers.get("User-Agent", ""),
        )
        self.requests.append(record)
        try:
            await self._apply_faults(record)
            self._authorise(record)
            body = await request.read()
            with self.lock:
                response = self._dispatch(request, body, route, record)
        except ApiError as error:
            record.status = error.code
            return web.json_response(error.status(), status=error.code)
        record.status = response.status
        return response

    def _discovery(self, path: str) -> JsonDict | None:
        if path == "/version":
            return version_document()
        if path == "/api":
            return api_versions_document()
        if path == "/apis":
            return api_group_list_document()
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            return resource_list_document("", parts[1])
        if parts[0] == "apis" and len(parts) == 3:
            return resource_list_document(parts[1], parts[2])
        return None

    def _route(self, path: str) -> _Route:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and find_resource(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        resource = find_resource(group, version, rest[0])
        if resource is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        return _Route(resource, version, namespace, name, subresource)

    async def _apply_faults(self, record: KubeRequest) -> None:
        for fault in self._faults:
            if not fault.matches(record):
                continue
            fault.times -= 1
            if fault.delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._delays_over.wait(), fault.delay)
            if fault.status is not None:
                raise ApiError(fault.status, _reason(fault.status), fault.message)
            return

    def _authorise(self, record: KubeRequest, verb: str | None = None) -> None:
        verb = verb or record.verb
        resource = record.resource + (f"/{record.subresource}" if record.subresource else "")
        allowed = self.allows(verb, record.group, resource, record.namespace, record.name)
        self.access_checks.append(
            AccessCheck(verb, record.group, resource, record.namespace, allowed)
        )
        if not allowed:
            group = f' in API group "{record.group}"'
            where = f' in the namespace "{record.namespace}"' if record.namespace else ""
            raise ApiError(
                403,
                "Forbidden",
                f'{record.resource} is forbidden: User "system:serviceaccount:hatchbot:manager" '
                f'cannot {verb} resource "{record.resource}"{group}{where}',
            )

    def _dispatch(
        self, request: web.Request, body: bytes, route: _Route, record: KubeRequest
    ) -> web.StreamResponse:
        resource, namespace, name = route.resource, route.namespace, route.name
        verb = record.verb
        # Like the real server: a list in a missing namespace is just empty.
        if (
            resource.namespaced
            and namespace is not None
            and verb not in ("list", "deletecollection")
        ):
            self._require_namespace(namespace, creating=verb in ("create", "patch"))
        if verb == "list":
            return self._list(request, route)
        if verb == "watch":
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by the fake")
        if verb == "create":
            return self._create(body, route)
        if verb == "deletecollection":
            return self._delete_collection(request, route)
        assert name is not None
        if verb == "get":
            return self._get(request, route)
        if verb == "delete":
            obj = self.store.delete(resource, namespace, name)
            if resource.plural == "deployments" and namespace:
                self._remove_pods(namespace, name)
            return web.json_response(self._present(obj, route))
        if verb == "update":
            return self._replace(body, route)
        if verb == "patch":
            return self._patch(request, body, route, record)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")

    def _require_namespace(self, namespace: str, *, creating: bool) -> None:
        if self.store.get(resource_by_plural("namespaces"), None, namespace) is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def _present(self, obj: JsonDict, route: _Route) -> JsonDict:
        shown = copy.deepcopy(obj)
        shown["apiVersion"] = route.resource.api_version(route.version)
        return shown

    def _list(self, request: web.Request, route: _Route) -> web.StreamResponse:
        items = self.store.list(
            route.resource,
            route.namespace,
            request.query.get("labelSelector"),
            request.query.get("fieldSelector"),
        )
        if "as=Table" in request.headers.get("Accept", ""):
            return web.json_response(_table(items))
        body = {
            "kind": f"{route.resource.kind}List",
            "apiVersion": route.resource.api_version(route.version),
            "metadata": {"resourceVersion": self.store.current_version()},
            "items": [self._present(obj, route) for obj in items],
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    def _get(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        obj = self.store.require(route.resource, route.namespace, route.name)
        if route.subresource == "log":
            return self._log(request, obj)
        if route.subresource == "scale":
            return web.json_response(_scale(obj))
        if "as=Table" in request.headers.get("Accept", ""):
            return web.json_response(_table([obj]))
        return web.json_response(self._present(obj, route))

    def _log(self, request: web.Request, pod: JsonDict) -> web.StreamResponse:
        statuses = pod.get("status", {}).get("containerStatuses", [])
        waiting = next(
            (c["state"]["waiting"] for c in statuses if "waiting" in c.get("state", {})), None
        )
        if waiting is not None and not any(c.get("restartCount") for c in statuses):
            # The real server: no log before the container first started.
            container = statuses[0].get("name", "agent")
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: '
                f"{waiting.get('reason', 'ContainerCreating')}",
            )
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        ran = self._kubelet_logs(*key) if self._kubelet_logs is not None else None
        lines = (ran if ran is not None else self._logs.get(key, "")).splitlines()
        tail = request.query.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        return web.Response(text="".join(line + "\n" for line in lines), content_type="text/plain")

    def _create(self, raw: bytes, route: _Route) -> web.StreamResponse:
        body = _json_body(raw)
        if route.resource.plural == "selfsubjectaccessreviews":
            return web.json_response(self._access_review(body), status=201)
        if body.get("kind") not in (None, route.resource.kind):
            raise ApiError(400, "BadRequest", f"the kind {body.get('kind')} does not match")
        obj = self.store.create(route.resource, route.namespace, body)
        self._written(route.resource, obj)
        return web.json_response(self._present(obj, route), status=201)

    def _access_review(self, body: JsonDict) -> JsonDict:
        attributes = body.get("spec", {}).get("resourceAttributes", {})
        resource = attributes.get("resource", "")
        if attributes.get("subresource"):
            resource += f"/{attributes['subresource']}"
        allowed = self.allows(
            attributes.get("verb", ""),
            attributes.get("group", ""),
            resource,
            attributes.get("namespace") or None,
            attributes.get("name") or None,
        )
        review = copy.deepcopy(body)
        review["status"] = {"allowed": allowed}
        return review

    def _replace(self, raw: bytes, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        body = _json_body(raw)
        live = self.store.require(route.resource, route.namespace, route.name)
        if route.subresource == "scale":
            return self._scale_to(route, live, int(body.get("spec", {}).get("replicas", 0)))
        sent_version = body.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != live["metadata"]["resourceVersion"]:
            raise _conflict(route)
        obj = self.store.replace_stored(route.resource, live, body, subresource=route.subresource)
        self._written(route.resource, obj)
        return web.json_response(self._present(obj, route))

    def _patch(
        self, request: web.Request, raw: bytes, route: _Route, record: KubeRequest
    ) -> web.StreamResponse:
        assert route.name is not None
        content_type = request.content_type
        if content_type == APPLY_PATCH:
            return self._apply(request, raw, route, record)
        body = _json_body(raw, allow_list=True)
        live = self.store.require(route.resource, route.namespace, route.name)
        if route.subresource == "scale":
            replicas = _dig_int(json_merge_patch(_scale(live), body), "spec", "replicas")
            return self._scale_to(route, live, replicas)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            patched = json_patch(live, body)
        elif content_type == "application/strategic-merge-patch+json":
            if route.resource.group not in (
                "",
                "apps",
                "networking.k8s.io",
                "rbac.authorization.k8s.io",
            ):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources",
                )
            patched = strategic_merge_patch(live, body)
        elif content_type == "application/merge-patch+json":
            patched = json_merge_patch(live, body)
        else:
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of type {content_type} is not supported"
            )
        sent_version = patched.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != live["metadata"]["resourceVersion"]:
            raise _conflict(route)
        obj = self.store.replace_stored(
            route.resource, live, patched, subresource=route.subresource
        )
        self._written(route.resource, obj)
        return web.json_response(self._present(obj, route))

    def _apply(
        self, request: web.Request, raw: bytes, route: _Route, record: KubeRequest
    ) -> web.StreamResponse:
        assert route.name is not None
        manager = request.query.get("fieldManager")
        if not manager:
            raise ApiError(
                422,
                "Invalid",
                "PATCH is invalid: fieldManager: Required value: is required for apply patch",
            )
        try:
            config = yaml.safe_load(raw.decode() or "{}")
        except yaml.YAMLError as error:
            raise ApiError(400, "BadRequest", f"error decoding YAML: {error}") from None
        if not isinstance(config, dict):
            raise ApiError(400, "BadRequest", "the apply body must be an object")
        if route.subresource == "status":
            live = self.store.require(route.resource, route.namespace, route.name)
            obj = self.store.replace_stored(route.resource, live, config, subresource="status")
            return web.json_response(self._present(obj, route))
        if self.store.get(route.resource, route.namespace, route.name) is None:
            self._authorise(record, verb="create")
        if request.query.get("dryRun") == "All":
            # Validated and authorised, never stored: what `doctor` relies on.
            existing = self.store.get(route.resource, route.namespace, route.name)
            preview = {**config, "metadata": {**config.get("metadata", {}), "uid": "dry-run"}}
            return web.json_response(preview, status=200 if existing else 201)
        obj, created = self.store.apply(
            route.resource,
            route.namespace,
            route.name,
            config,
            manager=manager,
            force=request.query.get("force", "").lower() in ("true", "1"),
        )
        self._written(route.resource, obj)
        return web.json_response(self._present(obj, route), status=201 if created else 200)

    def _delete_collection(self, request: web.Request, route: _Route) -> web.StreamResponse:
        doomed = self.store.list(
            route.resource,
            route.namespace,
            request.query.get("labelSelector"),
            request.query.get("fieldSelector"),
        )
        for obj in doomed:
            metadata = obj["metadata"]
            self.store.delete(route.resource, metadata.get("namespace"), metadata["name"])
            if route.resource.plural == "deployments":
                self._remove_pods(metadata["namespace"], metadata["name"])
        body = {
            "kind": f"{route.resource.kind}List",
            "apiVersion": route.resource.api_version(route.version),
            "metadata": {},
            "items": [self._present(obj, route) for obj in doomed],
        }
        return web.json_response(body)

    def _scale_to(self, route: _Route, live: JsonDict, replicas: int) -> web.StreamResponse:
        patched = copy.deepcopy(live)
        patched["spec"]["replicas"] = replicas
        obj = self.store.replace_stored(route.resource, live, patched)
        self._written(route.resource, obj)
        return web.json_response(_scale(obj))

    # -- the kubelet and the deployment controller ---------------------------------

    def _written(self, resource: Resource, obj: JsonDict) -> None:
        # The deployment controller reacts to spec changes (a new generation), like the real one.
        observed = obj.get("status", {}).get("observedGeneration")
        if resource.plural == "deployments" and observed != obj["metadata"]["generation"]:
            self._deployment_changed(obj)

    def _deployment_changed(self, deployment: JsonDict) -> None:
        if self._kubelet_wake is not None:
            self._kubelet_wake()
            return
        metadata = deployment["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        replicas = deployment.get("spec", {}).get("replicas", 1)
        if replicas == 0:
            self._remove_pods(namespace, name)
            self._write_deployment_status(namespace, name, ready=0, pods=0)
            return
        current = self._pods_of(namespace, name)
        wanted = template_hash(deployment)
        stale = [p for p in current if p["metadata"]["labels"].get("pod-template-hash") != wanted]
        if self.auto_ready and (stale or not current):
            # A rolling update: the new template's pod replaces the old ones.
            for pod in stale:
                self.store.delete(resource_by_plural("pods"), namespace, pod["metadata"]["name"])
            self._set_pod_state(namespace, name, ready=True)
        else:
            self._write_deployment_status(
                namespace, name, ready=sum(_pod_ready(p) for p in current), pods=len(current)
            )

    def _pods_of(self, namespace: str, deployment: str) -> list[JsonDict]:
        # Pods are named "<deployment>-<hash>-<suffix>": a cheap name test first keeps
        # this fast with thousands of pods (bench/health.py).
        prefix = f"{deployment}-"
        pods = [
            pod
            for (ns, name), pod in self.store.bucket(resource_by_plural("pods")).items()
            if ns == namespace
            and name.startswith(prefix)
            and any(
                ref.get("name") == deployment for ref in pod["metadata"].get("ownerReferences", [])
            )
        ]
        return sorted(pods, key=lambda pod: pod["metadata"]["name"])

    def _remove_pods(self, namespace: str, deployment: str) -> None:
        if self._kubelet_wake is not None:
            self._kubelet_wake()
        for pod in self._pods_of(namespace, deployment):
            self.store.delete(resource_by_plural("pods"), namespace, pod["metadata"]["name"])

    def _set_pod_state(
        self,
        namespace: str,
        deployment_name: str,
        *,
        ready: bool,
        waiting: str | None = None,
        restarts: int = 0,
        terminated: str | None = None,
        phase: str = "Running",
    ) -> None:
        with self.lock:
            self._set_pod_state_locked(
                namespace,
                deployment_name,
                ready=ready,
                waiting=waiting,
                restarts=restarts,
                terminated=terminated,
                phase=phase,
            )

    def _set_pod_state_locked(
        self,
        namespace: str,
        deployment_name: str,
        *,
        ready: bool,
        waiting: str | None,
        restarts: int,
        terminated: str | None,
        phase: str,
    ) -> None:
        deployments = resource_by_plural("deployments")
        deployment = self.store.get(deployments, namespace, deployment_name)
        if deployment is None:
            raise not_found(deployments, deployment_name)
        pods = resource_by_plural("pods")
        wanted = template_hash(deployment)
        current = [
            p
            for p in self._pods_of(namespace, deployment_name)
            if p["metadata"]["labels"].get("pod-template-hash") == wanted
        ]
        for stale in self._pods_of(namespace, deployment_name):
            if stale not in current:
                self.store.delete(pods, namespace, stale["metadata"]["name"])
        if current:
            pod = current[0]
        else:
            template = deployment.get("spec", {}).get("template", {})
            labels = {
                **template.get("metadata", {}).get("labels", {}),
                "pod-template-hash": wanted,
            }
            pod = self.store.create(
                pods,
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{deployment_name}-{wanted}-{secrets.token_hex(3)[:5]}",
                        "labels": labels,
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "ReplicaSet",
                                "name": deployment_name,
                                "uid": deployment["metadata"]["uid"],
                                "controller": True,
                            }
                        ],
                    },
                    "spec": copy.deepcopy(template.get("spec", {})),
                },
            )
        container = (pod.get("spec", {}).get("containers") or [{"name": "agent"}])[0]
        status: JsonDict = {"name": container.get("name", "agent"), "ready": ready,
                            "restartCount": restarts, "image": container.get("image", ""),
                            "imageID": ""}  # fmt: skip
        status["state"] = (
            {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": now()}}
        )
        if terminated:
            status["lastState"] = {
                "terminated": {
                    "reason": terminated,
                    "exitCode": 137 if terminated == "OOMKilled" else 1,
                }
            }
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        pod_status = {"phase": phase, "conditions": [condition], "containerStatuses": [status],
                      "startTime": now()}  # fmt: skip
        updated = copy.deepcopy(pod)
        updated["status"] = pod_status
        self.store.replace_stored(pods, pod, updated, subresource="status")
        self._write_deployment_status(namespace, deployment_name, ready=int(ready), pods=1)

    def _write_deployment_status(self, namespace: str, name: str, *, ready: int, pods: int) -> None:
        deployments = resource_by_plural("deployments")
        live = self.store.get(deployments, namespace, name)
        if live is None:
            return
        replicas = live.get("spec", {}).get("replicas", 1)
        wanted = template_hash(live)
        updated = [
            pod
            for pod in self._pods_of(namespace, name)
            if pod["metadata"]["labels"].get("pod-template-hash") == wanted
        ]
        status: JsonDict = {
            "observedGeneration": live["metadata"]["generation"],
            "replicas": pods,
            "updatedReplicas": len(updated),  # pods of the current template only
        }
        if ready:
            status.update(readyReplicas=ready, availableReplicas=ready)
        if replicas - ready > 0:
            status["unavailableReplicas"] = replicas - ready
        available = "True" if ready >= replicas else "False"
        status["conditions"] = [{"type": "Available", "status": available}]
        updated = copy.deepcopy(live)
        updated["status"] = status
        self.store.replace_stored(deployments, live, updated, subresource="status")


# -- helpers -------------------------------------------------------------------------


def _resource_of(plural: str, obj: JsonDict) -> Resource:
    """The object's own API group decides (two kinds are called `gateways`)."""
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    return find_resource(group, version, plural) or resource_by_plural(plural)


def _verb(request: web.Request, route: _Route) -> str:
    method = request.method
    if method == "GET":
        if route.name is None:
            return "watch" if request.query.get("watch") in ("1", "true") else "list"
        return "get"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextlib.contextmanager
def _pem_files(certificate: Certificate) -> Iterator[tuple[str, str]]:
    """`ssl` loads a certificate chain from files only."""
    with tempfile.TemporaryDirectory() as scratch:
        cert_file, key_file = Path(scratch, "tls.crt"), Path(scratch, "tls.key")
        cert_file.write_bytes(certificate.cert_pem)
        key_file.write_bytes(certificate.key_pem)
        yield str(cert_file), str(key_file)


def _json_body(raw: bytes, *, allow_list: bool = False) -> Any:
    try:
        body = json.loads(raw.decode() or "{}")
    except ValueError as error:
        raise ApiError(400, "BadRequest", f"invalid JSON: {error}") from None
    if isinstance(body, dict) or (allow_list and isinstance(body, list)):
        return body
    raise ApiError(400, "BadRequest", "the body must be a JSON object")


def _reason(status: int) -> str:
    return {
        400: "BadRequest",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }.get(status, "InternalError")


def _conflict(route: _Route) -> ApiError:
    qualified = (
        f"{route.resource.plural}.{route.resource.group}"
        if route.resource.group
        else route.resource.plural
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{route.name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": route.name, "group": route.resource.group, "kind": route.resource.plural},
    )


def _scale(deployment: JsonDict) -> JsonDict:
    metadata = deployment["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: metadata[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },
        "spec": {"replicas": deployment.get("spec", {}).get("replicas", 1)},
        "status": {"replicas": deployment.get("status", {}).get("replicas", 0)},
    }


def _dig_int(obj: JsonDict, *path: str) -> int:
    value: Any = obj
    for part in path:
        value = value.get(part, {})
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def template_hash(deployment: JsonDict) -> str:
    template = json.dumps(deployment.get("spec", {}).get("template", {}), sort_keys=True)
    return hashlib.sha256(template.encode()).hexdigest()[:10]


def _pod_ready(pod: JsonDict) -> int:
    conditions = pod.get("status", {}).get("conditions", [])
    return int(any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions))


def _table(items: list[JsonDict]) -> JsonDict:
    """The meta.k8s.io Table `kubectl get` asks for: NAME and AGE, plus the objects."""
    rows = [
        {
            "cells": [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            },
        }
        for obj in items
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": "Name",
                "priority": 0,
            },
            {
                "name": "Created At",
                "type": "date",
                "format": "",
                "description": "Age",
                "priority": 0,
            },
        ],
        "rows": rows,
    }


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubernetes]:
    """A started fake API server with the `agents` namespace."""
    async with FakeKubernetes() as fake:
        fake.put_object("namespaces", {"metadata": {"name": "agents"}})
        yield fake


@pytest.fixture
def kubeconfig(kube: FakeKubernetes, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube_api_client(kubeconfig: Path) -> Iterator[Any]:
    """A real `kubernetes.client.ApiClient` pointed at the fake."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    try:
        yield api_client
    finally:
        api_client.close()


# The default cluster policy (system:basic-user) lets every identity ask about itself.
_EVERYONE_MAY_CREATE = {
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
}


def _rule_allows(
    rule: JsonDict, verb: str, group: str, resource: str, name: str | None = None
) -> bool:
    def has(field: str, value: str) -> bool:
        values = rule.get(field, [])
        return "*" in values or value in values

    # As in the real server: a rule naming objects matches only requests for one of them,
    # so never a create (its request names no object) nor a list.
    names = rule.get("resourceNames")
    named = not names or (name is not None and name in names)
    return has("apiGroups", group) and has("resources", resource) and has("verbs", verb) and named
