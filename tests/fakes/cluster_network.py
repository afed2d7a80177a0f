"""The fake cluster's network: an ingress gateway for PUBLIC_URL and Services for in-cluster calls.

Both follow the objects in the fake API server, as the real data plane does:
- the ingress routes by the VirtualServices (Istio) or HTTPRoutes (Gateway API)
  present, with their Gateways (tests/fakes/ingress_routes.py): 404 when no route
  matches;
- a Service's selector and targetPort lead to a ready pod the fake kubelet runs:
  503 when no pod is ready;
- NetworkPolicy decides whether the connection to the pod is made
  (tests/fakes/network_policy.py): refused, it fails as a dropped connection does
  behind Envoy, with a 503.
The ingress listens on one loopback port and stands for PUBLIC_URL (the fake
Telegram sends webhooks for its host there); the in-cluster side serves
`<service_url>/<service-name>/<path>` for callers in the manager's namespace,
standing for `http://<service-name>.<namespace>.svc.cluster.local` (the manager's
health probes, through ClusterConfig.probe_base).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.ingress_routes import Backend, NoRoute, Request, route_gateway_api, route_istio
from tests.fakes.kube_resources import RESOURCES, resource_by_plural
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import serve_on_loopback
from tests.fakes.network_policy import Endpoint, allows, selector_matches

JsonDict = dict[str, Any]
# Hop-by-hop headers a proxy does not forward (RFC 9110 7.6.1), plus what aiohttp recomputes.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
               "proxy-connection", "content-length", "host"}  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """Where a connection comes from, for NetworkPolicy: a pod's namespace and labels."""

    namespace: str
    labels: Mapping[str, str]
    ip: str = "127.0.0.1"

    def endpoint(self) -> Endpoint:
        return Endpoint(ip=self.ip, namespace=self.namespace, pod_labels=dict(self.labels))


@dataclass
class Delivery:
    """One request through the fake network, for tests to look at."""

    via: str  # "ingress" or "service"
    host: str
    path: str
    status: int
    reason: str = ""


class FakeClusterNetwork:
    """`async with FakeClusterNetwork(kube, router="istio", ...) as network:`."""

    def __init__(
        self,
        kube: FakeKubernetes,
        *,
        router: str,
        ingress: Caller,
        manager: Caller,
        agents_namespace: str = "agents",
    ) -> None:
        if router not in ("istio", "gateway-api"):
            raise ValueError(f"no ingress for router {router!r}")
        self.kube = kube
        self.router = router
        self.ingress_caller = ingress
        self.manager_caller = manager
        self.agents_namespace = agents_namespace
        self.ingress_url = ""
        self.service_url = ""
        self.deliveries: list[Delivery] = []
        self._runners: list[web.AppRunner] = []
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        ingress = web.Application()
        ingress.router.add_route("*", "/{tail:.*}", self._ingress)
        services = web.Application()
        services.router.add_route("*", "/{service}/{tail:.*}", self._service)
        for app in (ingress, services):
            runner, url = await serve_on_loopback(app)
            self._runners.append(runner)
            if not self.ingress_url:
                self.ingress_url = url
            else:
                self.service_url = url

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> FakeClusterNetwork:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the two entrances -------------------------------------------------------------

    async def _ingress(self, request: web.Request) -> web.StreamResponse:
        asked = Request(
            host=request.headers.get("Host", ""),
            path=request.path,
            method=request.method,
            headers=dict(request.headers),
        )
        with self.kube.lock:
            target = self._route(asked)
        if isinstance(target, NoRoute):
            return self._answer("ingress", request, 404, target.reason)
        return await self._forward("ingress", request, target, self.ingress_caller)

    async def _service(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["service"]
        with self.kube.lock:
            service = self.kube.store.get(
                resource_by_plural("services"), self.agents_namespace, name
            )
        if service is None:  # no such Service: the name does not resolve
            return self._answer("service", request, 502, f"no Service {name}")
        port = service["spec"]["ports"][0]["port"]
        target = Backend(self.agents_namespace, name, port, "/" + request.match_info["tail"])
        return await self._forward("service", request, target, self.manager_caller)

    # -- routing, endpoints, policy ----------------------------------------------------

    def _route(self, asked: Request) -> Backend | NoRoute:
        objects = self.kube.store
        if self.router == "istio":
            return route_istio(
                asked,
                virtual_services=list(
                    objects.bucket(resource_by_plural("virtualservices")).values()
                ),
                gateways=self._gateways("networking.istio.io"),
            )
        return route_gateway_api(
            asked,
            http_routes=list(objects.bucket(resource_by_plural("httproutes")).values()),
            gateways=self._gateways("gateway.networking.k8s.io"),
            namespace_labels=self._namespace_labels(),
        )

    def _gateways(self, group: str) -> list[JsonDict]:
        (kind,) = [r for r in RESOURCES if r.plural == "gateways" and r.group == group]
        return list(self.kube.store.bucket(kind).values())

    def _namespace_labels(self) -> dict[str, dict[str, str]]:
        namespaces = self.kube.store.bucket(resource_by_plural("namespaces")).values()
        return {
            ns["metadata"]["name"]: dict(ns["metadata"].get("labels") or {}) for ns in namespaces
        }

    def _endpoint(self, target: Backend, caller: Caller) -> tuple[str, int] | str:
        """A ready pod behind the Service, as (ip, port); else why there is none."""
        store = self.kube.store
        service = store.get(resource_by_plural("services"), target.namespace, target.service)
        if service is None:
            return f"no Service {target.namespace}/{target.service}"
        ports = [p for p in service["spec"].get("ports", []) if p["port"] == target.port]
        if not ports:
            return f"Service {target.service} has no port {target.port}"
        target_port = ports[0].get("targetPort", target.port)
        selector = service["spec"].get("selector") or {}
        ready = [
            pod
            for pod in store.bucket(resource_by_plural("pods")).values()
            if pod["metadata"].get("namespace") == target.namespace
            and selector
            and selector_matches({"matchLabels": selector}, pod["metadata"].get("labels") or {})
            and "deletionTimestamp" not in pod["metadata"]
            and {"type": "Ready", "status": "True"} in pod.get("status", {}).get("conditions", [])
            and pod.get("status", {}).get("podIP")
        ]
        if not ready:
            return "no healthy upstream"
        pod = random.choice(ready)  # kube-proxy and Envoy spread requests over endpoints
        named = _named_ports(pod)
        port = named.get(target_port) if isinstance(target_port, str) else int(target_port)
        if port is None:
            return f"pod {pod['metadata']['name']} has no port named {target_port}"
        destination = Endpoint(
            ip=pod["status"]["podIP"],
            namespace=target.namespace,
            pod_labels=dict(pod["metadata"].get("labels") or {}),
            named_ports=named,
        )
        policies = [
            policy
            for policy in store.bucket(resource_by_plural("networkpolicies")).values()
            if policy["metadata"].get("namespace") == target.namespace
        ]
        if not allows(
            policies, self._namespace_labels(), source=caller.endpoint(),
            destination=destination, port=port,
        ):  # fmt: skip
            return "upstream connect error: the connection was dropped (NetworkPolicy)"
        return destination.ip, port

    async def _forward(
        self, via: str, request: web.Request, target: Backend, caller: Caller
    ) -> web.StreamResponse:
        with self.kube.lock:
            endpoint = self._endpoint(target, caller)
        if isinstance(endpoint, str):
            return self._answer(via, request, 503, endpoint)
        ip, port = endpoint
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = f"http://{ip}:{port}{target.path}"
        if request.query_string:
            url += f"?{request.query_string}"
        try:
            async with self._http.request(
                request.method, url, headers=headers, data=await request.read()
            ) as answer:
                body = await answer.read()
                shown = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                self.deliveries.append(
                    Delivery(via, request.headers.get("Host", ""), request.path, answer.status)
                )
                return web.Response(status=answer.status, body=body, headers=shown)
        except (aiohttp.ClientError, OSError) as error:
            return self._answer(via, request, 503, f"upstream connect error: {error}")

    def _answer(self, via: str, request: web.Request, status: int, reason: str) -> web.Response:
        self.deliveries.append(
            Delivery(via, request.headers.get("Host", ""), request.path, status, reason)
        )
        return web.Response(status=status, text=f"{reason}\n")


def _named_ports(pod: JsonDict) -> dict[str, int]:
    return {
        port["name"]: port["containerPort"]
        for container in pod.get("spec", {}).get("containers", [])
        for port in container.get("ports", [])
        if "name" in port
    }
