"""The ingress routing emulator: the project's own routes, then Gateway API and Istio rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.manifests import ClusterConfig, route, service, webhook_path
from tests.fakes.ingress_routes import (
    Backend,
    NoRoute,
    Request,
    normalize_path,
    request_host,
    route_gateway_api,
    route_istio,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "bots.example.com"
AGENTS = "agents"
JsonDict = dict[str, Any]


def load(relative: str) -> JsonDict:
    loaded: JsonDict = yaml.safe_load((ROOT / relative).read_text())
    return loaded


ISTIO_GATEWAY = load("k8s/istio-gateway.yaml")
GATEWAY = load("k8s/gateway-api/gateway.yaml")


def agent(agent_id: str) -> AgentSpec:
    return AgentSpec(
        agent_id=agent_id,
        secrets=AgentSecrets(
            bot_token=SecretStr("7000000001:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            webhook_secret=SecretStr("hook_secret_value_123"),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="Be brief.",
    )


def cluster(router: str) -> ClusterConfig:
    return ClusterConfig(
        namespace=AGENTS,
        image="hatchbot:test",
        router=router,
        public_url=f"https://{HOST}",
        gateway="hatchbot-system/hatchbot-gateway",
    )


def deliver(router: str, request: Request, *agent_ids: str, port: int = 443) -> Backend | NoRoute:
    """The request through the project's routes for these agents and its Gateway."""
    routes = [route(agent(agent_id), cluster(router)) for agent_id in agent_ids]
    generated = [found for found in routes if found is not None]
    if router == "istio":
        return route_istio(
            request, virtual_services=generated, gateways=[ISTIO_GATEWAY], gateway_port=port
        )
    return route_gateway_api(
        request,
        http_routes=generated,
        gateways=[GATEWAY],
        namespace_labels={AGENTS: {}, "hatchbot-system": {}},
        listener_port=port,
    )


def hook(agent_id: str) -> str:
    return webhook_path(agent(agent_id), cluster("istio"))


ROUTERS = pytest.mark.parametrize("router", ["istio", "gateway-api"])


# The project's generated objects.


@ROUTERS
def test_a_webhook_reaches_its_agents_service(router: str) -> None:
    ports = service(agent("a1"), cluster(router))["spec"]["ports"]
    for agent_id in ("a1", "a2"):
        found = deliver(router, Request(HOST, hook(agent_id)), "a1", "a2")
        assert found == Backend(AGENTS, f"agent-{agent_id}", ports[0]["port"], hook(agent_id))
    assert deliver(router, Request("BOTS.Example.com:443", hook("a1")), "a1") == Backend(
        AGENTS, "agent-a1", 80, hook("a1")
    )


@ROUTERS
@pytest.mark.parametrize(
    "request_",
    [
        Request(HOST, hook("a1"), method="GET"),
        Request(HOST, hook("a1") + "/extra"),
        Request(HOST, hook("a1") + "/"),
        Request(HOST, hook("a3")),
        Request(HOST, "/webhook"),
        Request("other.example.com", hook("a1")),
        Request("example.com", hook("a1")),
    ],
    ids=["get", "extra segment", "trailing slash", "other agent", "prefix", "host", "parent"],
)
def test_nothing_else_reaches_an_agent(router: str, request_: Request) -> None:
    found = deliver(router, request_, "a1", "a2")
    assert isinstance(found, NoRoute), found


@ROUTERS
def test_dot_segments_are_resolved_before_routing(router: str) -> None:
    found = deliver(router, Request(HOST, "/webhook/a2/../a1"), "a1", "a2")
    assert found == Backend(AGENTS, "agent-a1", 80, "/webhook/a1")
    assert deliver(router, Request(HOST, "/webhook/%61%31"), "a1") == Backend(
        AGENTS, "agent-a1", 80, "/webhook/a1"
    )


@ROUTERS
def test_plain_http_gets_no_agent(router: str) -> None:
    found = deliver(router, Request(HOST, hook("a1")), "a1", port=80)
    assert isinstance(found, NoRoute)
    if router == "istio":
        assert "redirects HTTP to HTTPS" in found.reason


def test_hosts_and_paths_are_normalized_as_envoy_does() -> None:
    assert request_host("Bots.Example.COM:8443") == HOST
    assert request_host("[::1]:443") == "[::1]"
    assert normalize_path("/a/./b/../c/") == "/a/c/"
    assert normalize_path("/a/..") == "/"
    assert normalize_path("/a/%2E%2e/b%2fc%7e") == "/b%2Fc~"
    assert normalize_path("/a//b") == "/a//b"
    assert normalize_path("*") is None


# Gateway API.


def gateway(
    namespace: str = "edge",
    source: str = "Same",
    hostname: str | None = HOST,
    selector: JsonDict | None = None,
    **listener: Any,
) -> JsonDict:
    namespaces: JsonDict = {"from": source}
    if selector is not None:
        namespaces["selector"] = selector
    entry: JsonDict = {"name": "https", "port": 443, "protocol": "HTTPS"}
    if hostname is not None:
        entry["hostname"] = hostname
    entry["allowedRoutes"] = {"namespaces": namespaces}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": namespace},
        "spec": {"gatewayClassName": "istio", "listeners": [{**entry, **listener}]},
    }


def http_route(
    name: str,
    *rules: JsonDict,
    namespace: str = "edge",
    hostnames: tuple[str, ...] = (),
    parent: JsonDict | None = None,
) -> JsonDict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [parent or {"name": "gw", "namespace": "edge"}],
            "hostnames": list(hostnames),
            "rules": list(rules),
        },
    }


def rule(service_name: str, *matches: JsonDict, **extra: Any) -> JsonDict:
    return {
        "matches": list(matches),
        "backendRefs": [{"name": service_name, "port": 8080}],
        **extra,
    }


def path(kind: str, value: str, **extra: Any) -> JsonDict:
    return {"path": {"type": kind, "value": value}, **extra}


def send(
    request: Request | str,
    *routes: JsonDict,
    gateways: tuple[JsonDict, ...] | None = None,
    labels: dict[str, dict[str, str]] | None = None,
) -> Backend | NoRoute:
    if isinstance(request, str):
        request = Request(HOST, request)
    return route_gateway_api(
        request,
        http_routes=routes,
        gateways=gateways if gateways is not None else (gateway(),),
        namespace_labels=labels or {},
    )


def reached(found: Backend | NoRoute) -> str:
    """`service path` of a backend, or `-` for no route."""
    return f"{found.service} {found.path}" if isinstance(found, Backend) else "-"


def test_the_selector_admits_only_the_namespaces_it_selects() -> None:
    hatchbot = route(agent("a1"), cluster("gateway-api"))
    assert hatchbot is not None
    moved = {**hatchbot, "metadata": {**hatchbot["metadata"], "namespace": "intruders"}}
    found = route_gateway_api(
        Request(HOST, hook("a1")),
        http_routes=[moved],
        gateways=[GATEWAY],
        namespace_labels={"intruders": {"team": "agents"}},
    )
    assert isinstance(found, NoRoute)
    assert "not admitted by Gateway hatchbot-system/hatchbot-gateway" in found.reason

    labelled = gateway(source="Selector", selector={"matchLabels": {"team": "bots"}})
    routed = http_route("r", rule("svc"), namespace="apps")
    admitted = send("/x", routed, gateways=(labelled,), labels={"apps": {"team": "bots"}})
    assert reached(admitted) == "svc /x"
    assert send("/x", routed, gateways=(labelled,)) == NoRoute(
        "no route for host bots.example.com on port 443: "
        "route's namespace apps not admitted by Gateway edge/gw"
    )
    expressions = gateway(
        source="Selector",
        selector={"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["x"]}]},
    )
    assert reached(send("/x", routed, gateways=(expressions,))) == "svc /x"


def test_from_same_admits_only_the_gateways_namespace() -> None:
    assert reached(send("/x", http_route("r", rule("svc")))) == "svc /x"
    assert reached(send("/x", http_route("r", rule("svc"), namespace="other"))) == "-"


def test_from_all_admits_every_namespace() -> None:
    routed = http_route("r", rule("svc"), namespace="anywhere")
    assert send("/x", routed, gateways=(gateway(source="All"),)) == Backend(
        "anywhere", "svc", 8080, "/x"
    )


def test_a_route_to_a_missing_gateway_or_listener_goes_nowhere() -> None:
    missing = http_route("r", rule("svc"), parent={"name": "nope"})
    found = send("/x", missing)
    assert isinstance(found, NoRoute) and "Gateway edge/nope" in found.reason
    other_section = http_route("r", rule("svc"), parent={"name": "gw", "sectionName": "http"})
    assert reached(send("/x", other_section)) == "-"
    only_tcp = gateway(protocol="TCP")
    assert reached(send("/x", http_route("r", rule("svc")), gateways=(only_tcp,))) == "-"
    grpc_only = gateway(allowedRoutes={"kinds": [{"kind": "GRPCRoute"}]})
    assert reached(send("/x", http_route("r", rule("svc")), gateways=(grpc_only,))) == "-"


def test_the_listener_hostname_must_match_the_host() -> None:
    routed = http_route("r", rule("svc"))
    assert reached(send(Request("other.example.com", "/x"), routed)) == "-"
    wildcard = (gateway(hostname="*.example.com"),)
    assert reached(send(Request("a.b.example.com", "/x"), routed, gateways=wildcard)) == "svc /x"
    assert reached(send(Request("example.com", "/x"), routed, gateways=wildcard)) == "-"
    named = http_route("r", rule("svc"), hostnames=("bots.example.com",))
    assert reached(send(Request("a.example.com", "/x"), named, gateways=wildcard)) == "-"
    assert reached(send(Request(HOST, "/x"), named, gateways=wildcard)) == "svc /x"


def test_exact_beats_prefix_and_the_longer_prefix_beats_the_older_route() -> None:
    routes = (
        http_route("old", rule("prefix", path("PathPrefix", "/webhook"))),
        http_route("short", rule("root", path("PathPrefix", "/"))),
        http_route("new", rule("exact", path("Exact", "/webhook/a1"))),
        http_route("regex", rule("regex", path("RegularExpression", "/webhook/.*"))),
    )
    assert reached(send("/webhook/a1", *routes)) == "exact /webhook/a1"
    assert reached(send("/webhook/a2", *routes)) == "prefix /webhook/a2"
    assert reached(send("/other", *routes)) == "root /other"


def test_a_method_and_more_headers_win_ties_then_the_older_route() -> None:
    header = {"headers": [{"name": "X-Team", "value": "a"}]}
    routes = (
        http_route("plain", rule("plain", path("PathPrefix", "/api"))),
        http_route("header", rule("header", path("PathPrefix", "/api", **header))),
        http_route("method", rule("method", path("PathPrefix", "/api", method="POST"))),
        http_route("twin", rule("twin", path("PathPrefix", "/api"))),
    )
    assert reached(send(Request(HOST, "/api", "POST", {"x-team": "a"}), *routes)) == "method /api"
    assert reached(send(Request(HOST, "/api", "GET", {"x-team": "a"}), *routes)) == "header /api"
    assert reached(send(Request(HOST, "/api", "GET", {"x-team": "b"}), *routes)) == "plain /api"


def test_a_path_prefix_matches_whole_path_elements() -> None:
    for value in ("/abc", "/abc/"):
        routed = http_route("r", rule("svc", path("PathPrefix", value)))
        for matching in ("/abc", "/abc/", "/abc/x"):
            assert reached(send(matching, routed)) == f"svc {matching}", (value, matching)
        assert reached(send("/abcd", routed)) == "-", value
    regex = http_route("r", rule("svc", path("RegularExpression", "/a[0-9]+")))
    assert [reached(send(p, regex)) for p in ("/a1", "/a1/x", "/xa1")] == ["svc /a1", "-", "-"]


def test_url_rewrite_replaces_the_prefix_or_the_whole_path() -> None:
    def rewritten(prefix: str, replacement: str, request_path: str) -> str:
        modifier = {"type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}
        filters = [{"type": "URLRewrite", "urlRewrite": {"path": modifier}}]
        routed = http_route("r", rule("svc", path("PathPrefix", prefix), filters=filters))
        return reached(send(request_path, routed)).removeprefix("svc ")

    # The table of HTTPPathModifier.replacePrefixMatch in the Gateway API spec.
    assert rewritten("/foo", "/xyz", "/foo/bar") == "/xyz/bar"
    assert rewritten("/foo", "/xyz/", "/foo/bar") == "/xyz/bar"
    assert rewritten("/foo/", "/xyz", "/foo/bar") == "/xyz/bar"
    assert rewritten("/foo", "/xyz", "/foo") == "/xyz"
    assert rewritten("/foo", "/xyz", "/foo/") == "/xyz/"
    assert rewritten("/foo", "/", "/foo/bar") == "/bar"
    assert rewritten("/foo", "/", "/foo") == "/"
    full = [
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}},
        }
    ]
    routed = http_route("r", rule("svc", path("Exact", "/old"), filters=full))
    assert reached(send("/old", routed)) == "svc /new"


def test_backends_outside_the_route_namespace_or_without_weight_go_nowhere() -> None:
    crossing = rule("svc")
    crossing["backendRefs"] = [{"name": "svc", "namespace": "elsewhere", "port": 80}]
    found = send("/x", http_route("r", crossing))
    assert isinstance(found, NoRoute)
    assert found.reason.startswith("cross-namespace backend without ReferenceGrant")
    weighted = rule("svc")
    weighted["backendRefs"] = [
        {"name": "off", "port": 80, "weight": 0},
        {"name": "on", "port": 80},
    ]
    assert reached(send("/x", http_route("r", weighted))) == "on /x"
    redirecting = rule("svc", filters=[{"type": "RequestRedirect", "requestRedirect": {}}])
    assert reached(send("/x", http_route("r", redirecting))) == "-"


# Istio.


def istio_gateway(
    name: str = "gw", namespace: str = "edge", hosts: tuple[str, ...] = ("*.example.com",)
) -> JsonDict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": list(hosts),
                    "tls": {"mode": "SIMPLE", "credentialName": "tls"},
                }
            ],
        },
    }


def virtual_service(
    name: str,
    *rules: JsonDict,
    namespace: str = "team",
    hosts: tuple[str, ...] = (HOST,),
    gateways: tuple[str, ...] = ("edge/gw",),
) -> JsonDict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hosts": list(hosts), "gateways": list(gateways), "http": list(rules)},
    }


def istio_rule(host: str, *matches: JsonDict, port: int = 80, **extra: Any) -> JsonDict:
    destination = {"host": host, "port": {"number": port}}
    return {"match": list(matches), "route": [{"destination": destination}], **extra}


def via_istio(
    request: Request | str, *services: JsonDict, gateways: tuple[JsonDict, ...] | None = None
) -> Backend | NoRoute:
    if isinstance(request, str):
        request = Request(HOST, request)
    return route_istio(
        request,
        virtual_services=services,
        gateways=gateways if gateways is not None else (istio_gateway(),),
    )


def test_a_virtual_service_on_a_missing_gateway_goes_nowhere() -> None:
    service_ = virtual_service("vs", istio_rule("echo"), gateways=("edge/missing",))
    found = via_istio("/x", service_)
    assert isinstance(found, NoRoute) and "Gateway edge/missing" in found.reason
    bare = virtual_service("vs", istio_rule("echo"), gateways=("gw",))  # team/gw
    assert reached(via_istio("/x", bare)) == "-"
    assert reached(via_istio("/x", bare, gateways=(istio_gateway(namespace="team"),))) == "echo /x"
    assert reached(via_istio("/x", virtual_service("vs", istio_rule("echo"), gateways=()))) == "-"


def test_the_hosts_of_the_virtual_service_and_the_gateway_must_match() -> None:
    service_ = virtual_service("vs", istio_rule("echo"))
    assert reached(via_istio(Request("other.example.com", "/x"), service_)) == "-"
    assert reached(via_istio(Request("bots.example.org", "/x"), service_)) == "-"
    narrow = (istio_gateway(hosts=("other.example.com",)),)
    assert reached(via_istio("/x", service_, gateways=narrow)) == "-"
    own_namespace_only = (istio_gateway(hosts=("./*.example.com",)),)
    assert reached(via_istio("/x", service_, gateways=own_namespace_only)) == "-"
    scoped = (istio_gateway(hosts=("team/*.example.com",)),)
    assert reached(via_istio("/x", service_, gateways=scoped)) == "echo /x"


def test_a_prefix_match_rewrites_its_prefix_and_an_exact_match_the_whole_path() -> None:
    prefix = istio_rule("echo", {"uri": {"prefix": "/api"}}, rewrite={"uri": "/v2"})
    exact = istio_rule("echo", {"uri": {"exact": "/old"}}, rewrite={"uri": "/new"})
    service_ = virtual_service("vs", exact, prefix)
    assert reached(via_istio("/api/users", service_)) == "echo /v2/users"
    assert reached(via_istio("/apis", service_)) == "echo /v2s"  # a string prefix
    assert reached(via_istio("/old", service_)) == "echo /new"
    assert reached(via_istio("/other", service_)) == "-"


def test_a_regex_must_match_the_whole_path() -> None:
    service_ = virtual_service("vs", istio_rule("echo", {"uri": {"regex": "/webhook/[a-z0-9]+"}}))
    assert reached(via_istio("/webhook/a1", service_)) == "echo /webhook/a1"
    assert reached(via_istio("/webhook/a1/x", service_)) == "-"
    assert reached(via_istio("/x/webhook/a1", service_)) == "-"


def test_the_first_matching_rule_wins_even_when_a_later_one_is_more_specific() -> None:
    service_ = virtual_service(
        "vs",
        istio_rule("broad", {"uri": {"prefix": "/api"}}),
        istio_rule("special", {"uri": {"exact": "/api/special"}}),
    )
    later = virtual_service("later", istio_rule("later", {"uri": {"prefix": "/"}}))
    assert reached(via_istio("/api/special", service_, later)) == "broad /api/special"
    assert reached(via_istio("/else", service_, later)) == "later /else"


def test_match_fields_are_anded_and_matches_ored() -> None:
    guarded = {"uri": {"exact": "/hook"}, "method": {"exact": "POST"}, "headers": {"x-key": {}}}
    service_ = virtual_service("vs", istio_rule("echo", guarded, {"uri": {"prefix": "/open"}}))
    assert reached(via_istio(Request(HOST, "/hook", "POST", {"X-Key": "1"}), service_)) != "-"
    assert reached(via_istio(Request(HOST, "/hook", "POST"), service_)) == "-"
    assert reached(via_istio(Request(HOST, "/hook", "GET", {"x-key": "1"}), service_)) == "-"
    assert reached(via_istio(Request(HOST, "/open/x", "GET"), service_)) == "echo /open/x"


def test_a_short_destination_host_is_a_service_of_the_virtual_services_namespace() -> None:
    def backend(host: str) -> Backend | NoRoute:
        return via_istio("/x", virtual_service("vs", istio_rule(host, port=8080)))

    assert backend("echo") == Backend("team", "echo", 8080, "/x")
    assert backend("echo.other.svc.cluster.local") == Backend("other", "echo", 8080, "/x")
    for dotted in ("echo.other", "echo.other.svc", "api.example.com"):
        assert isinstance(backend(dotted), NoRoute), dotted


def test_the_most_specific_host_hides_wildcard_virtual_services() -> None:
    wildcard = virtual_service("wild", istio_rule("wild"), hosts=("*.example.com",))
    exact = virtual_service("exact", istio_rule("exact", {"uri": {"prefix": "/webhook"}}))
    assert reached(via_istio("/webhook/a1", wildcard, exact)) == "exact /webhook/a1"
    assert reached(via_istio("/other", wildcard, exact)) == "-"
    assert reached(via_istio(Request("x.example.com", "/other"), wildcard, exact)) == "wild /other"


def test_unmodelled_istio_features_raise() -> None:
    sourced = virtual_service("vs", istio_rule("echo", {"sourceLabels": {"app": "x"}}))
    with pytest.raises(NotImplementedError):
        via_istio("/x", sourced)
