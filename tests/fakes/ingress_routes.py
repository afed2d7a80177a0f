"""Where an ingress gateway sends one HTTP request, given the cluster's routing objects.

Pure functions, no I/O: the fake ingress server calls `route_istio` or `route_gateway_api`
for every request and follows the returned `Backend` (a Service port) to a pod; a `NoRoute`
is what a real gateway answers with 404, 500 or a redirect, its reason in plain words.

Both routers first normalize the request as Envoy does by default (Istio's `BASE` path
normalization, RFC 3986 section 6): the Host header loses any port and its case; escaped
unreserved characters in the path are decoded, other escapes upper-cased, and `.` and `..`
segments removed (`/webhook/b/../a` is `/webhook/a`). Slashes are not merged, backslashes
are not rewritten, a trailing dot of the host is kept. A path not starting with `/` is a
`NoRoute` (Envoy answers 400). The returned path is the normalized one, after any rewrite.

Istio (`networking.istio.io/v1`), `route_istio`:
- A VirtualService is bound through its `gateways` (`ns/name`, `./name`, bare `name` in its
  own namespace, the legacy `name.ns.svc.cluster.local`; `mesh` and an absent list bind it
  to no Gateway) to each existing Gateway with a server on `gateway_port` whose protocol is
  HTTP, HTTPS (not PASSTHROUGH), HTTP2 or GRPC and whose `hosts` (`[ns/]host`, ns `*`, `.`
  or a name restricting the VirtualService's namespace) match the Host; its own `hosts`
  (short names resolved in its namespace) must match the Host too.
- Like Envoy choosing a virtual host, only the VirtualServices whose domain (the narrower
  of their host and the server's) is the most specific for the Host are looked at: a
  `bots.example.com` VirtualService hides a `*.example.com` one entirely, with no fall
  through. Those are merged in the order given (creation order): the first matching rule
  of the first VirtualService wins.
- A plain HTTP server with `tls.httpsRedirect` answers every request with a redirect.
- Rule `match` entries are OR, their fields AND: `uri`, `method`, `authority`, `headers`
  (StringMatch `exact`/`prefix`/`regex`; regex is a full match; an empty StringMatch on a
  header checks presence), `ignoreUriCase`, `port`, `gateways`. `queryParams` never
  match (a `Request` has no query). `uri.prefix` is a string prefix (`/api` matches
  `/apis`). No `match` matches everything.
- `rewrite.uri` replaces the matched prefix (`prefix` match, or `/` when the match has no
  `uri`) or the whole path (`exact`/`regex`); `rewrite.uriRegexRewrite` substitutes.
  `redirect` and `directResponse` rules are a `NoRoute`.
- Destination hosts are resolved as Istio's ResolveShortnameToFQDN does: a name without a
  dot is `<name>.<VirtualService namespace>.svc.cluster.local`, a dotted name is taken as
  a fully qualified name. So only short names and `<name>.<ns>.svc.cluster.local` name a
  Service; `<name>.<ns>` and `<name>.<ns>.svc` are a `NoRoute` (no such cluster in Envoy).
Omitted: the Gateway's `selector` (every Gateway given serves this ingress), `exportTo`,
SNI filter-chain selection among HTTPS servers (the Host header picks the server), weights
(the first destination with weight > 0, else the first), DestinationRule subsets (ignored),
fault injection, mirrors, retries, timeouts, header and authority rewrites. What would need
them to be decided raises NotImplementedError: `delegate`, the match fields `scheme`,
`sourceLabels`, `sourceNamespace` and `withoutHeaders`, a destination without
`port.number` (the choice depends on the Service's ports).

Gateway API (`gateway.networking.k8s.io/v1`), `route_gateway_api`:
- In each Gateway the listener on `listener_port` with HTTP or HTTPS protocol whose
  `hostname` (absent: all; `*.x` matches any subdomain of x, not x) matches the Host most
  specifically serves the request. An HTTPRoute is attached when one of its `parentRefs`
  (group/kind Gateway, namespace defaulting to the route's) names that Gateway, its
  `sectionName` and `port` (if given) are that listener's, the listener's
  `allowedRoutes.kinds` (default: HTTPRoute) and `allowedRoutes.namespaces.from` admit it
  (`Same`, the default: the Gateway's namespace; `All`; `Selector`: a label selector
  against `namespace_labels[ns]` plus `kubernetes.io/metadata.name`), and its `hostnames`
  (empty: the listener's) match the Host.
- Across all rules of the attached routes the winner is, in order: the route hostname
  matching the Host most specifically (exact, then longer), Exact over PathPrefix over
  RegularExpression (regex precedence is implementation-specific: this is Istio's), the
  longer path value, a method match, more header matches, more query matches, the route
  given first (oldest), the first rule, the first match. Hostname precedence is applied as
  a sort key, so a request falls through to a less specific hostname's routes.
- `PathPrefix` is element-wise (`/abc` matches `/abc`, `/abc/x`, not `/abcd`; a trailing
  `/` in the value is ignored); `Exact` is string equality; `RegularExpression` and header
  `RegularExpression` are full matches; header names compare case-insensitively, `method`
  exactly; `queryParams` never match. A rule without `matches` is PathPrefix `/`.
- Filters: `URLRewrite` path (`ReplaceFullPath`, `ReplacePrefixMatch`: only with a
  PathPrefix match) changes the path; `RequestRedirect` is a `NoRoute`; `ExtensionRef`
  raises NotImplementedError; the others do not change where the request goes.
- `backendRefs`: the first with weight (default 1) > 0 (none: `NoRoute`, a 500); only core
  Services; a backend in another namespace is a `NoRoute`, since ReferenceGrants are not
  modelled.
Omitted: route and Gateway status (every route is taken as Accepted), GatewayClass, TLS and
SNI, the 421 for misdirected requests, Gateway addresses (all Gateways share one ingress),
`timeouts`, `sessionPersistence`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = Mapping[str, Any]
CLUSTER_DOMAIN = "svc.cluster.local"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_ISTIO_HTTP = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC"})
_ISTIO_PASSTHROUGH = frozenset({"PASSTHROUGH", "AUTO_PASSTHROUGH"})
_ISTIO_UNMODELLED = ("scheme", "sourceLabels", "sourceNamespace", "withoutHeaders")
_PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}


@dataclass(frozen=True)
class Request:
    host: str  # the Host header; any port is stripped here
    path: str  # the raw path, no query
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    namespace: str  # the Service's namespace
    service: str  # the Service's name
    port: int  # the Service port (spec.ports[].port)
    path: str  # the path after normalization and any rewrite


@dataclass(frozen=True)
class NoRoute:
    reason: str


# Reading objects: every field may be absent.


def _mapping(value: Any) -> Obj:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _spec(obj: Obj) -> Obj:
    return _mapping(obj.get("spec"))


def _namespace(obj: Obj) -> str:
    return str(_mapping(obj.get("metadata")).get("namespace") or "default")


def _key(obj: Obj) -> str:
    return f"{_namespace(obj)}/{_mapping(obj.get('metadata')).get('name', '')}"


def _find(objects: Sequence[Obj], key: str) -> Obj | None:
    return next((obj for obj in objects if _key(obj) == key), None)


def _because(head: str, reasons: Sequence[str]) -> NoRoute:
    return NoRoute(f"{head}: {'; '.join(reasons)}" if reasons else head)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


# Hosts and paths, shared by both routers.


def request_host(host: str) -> str:
    """The Host header as gateways compare it: lower case, any `:port` stripped."""
    value = host.strip().lower()
    if value.startswith("["):  # an IPv6 literal
        return value.partition("]")[0] + "]"
    name, colon, port = value.rpartition(":")
    return name if colon and port.isdigit() else value


def host_matches(pattern: str, host: str) -> bool:
    """`*` matches every host, `*.example.com` any host ending in `.example.com` (at any
    depth, never `example.com` itself), any other pattern only itself."""
    pattern = pattern.lower()
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def _specificity(pattern: str) -> tuple[bool, int]:
    """Exact before wildcard, then longer first: Envoy's virtual host order."""
    return (not pattern.startswith("*"), len(pattern))


def _narrower(first: str, second: str) -> str:
    """Of two patterns matching the same host, the one that is their intersection."""
    return max(first, second, key=_specificity)


def normalize_path(raw: str) -> str | None:
    """The path as Envoy routes and forwards it, or None when it is not absolute."""
    if not raw.startswith("/"):
        return None
    return _remove_dot_segments(_ESCAPE.sub(_unescape, raw))


def _unescape(escape: re.Match[str]) -> str:
    char = chr(int(escape.group(1), 16))
    return char if char in _UNRESERVED else "%" + escape.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")
    return "/" + "/".join(kept)


def _refused_path(request: Request) -> NoRoute:
    return NoRoute(f"path {request.path!r} is not absolute (the gateway answers 400)")


# Istio.


@dataclass(frozen=True)
class _Binding:
    """A VirtualService bound, for the request's host, to Gateway servers."""

    virtual_service: Obj
    domain: str  # its virtual host: the narrower of its host and the server's
    gateways: frozenset[str]  # `ns/name` of the Gateways it is bound through
    redirect: str | None  # a Gateway that answers this plain HTTP with a redirect to HTTPS


def route_istio(
    request: Request,
    *,
    virtual_services: Sequence[Mapping[str, Any]],
    gateways: Sequence[Mapping[str, Any]],
    gateway_port: int = 443,
) -> Backend | NoRoute:
    """Where an Istio ingress gateway listening on `gateway_port` sends the request."""
    host = request_host(request.host)
    path = normalize_path(request.path)
    if path is None:
        return _refused_path(request)
    reasons: list[str] = []
    bindings = [
        binding
        for virtual_service in virtual_services
        if (binding := _istio_binding(virtual_service, host, gateways, gateway_port, reasons))
    ]
    if not bindings:
        return _because(f"no route for host {host} on port {gateway_port}", reasons)
    domain = max((binding.domain for binding in bindings), key=_specificity)
    chosen = [binding for binding in bindings if binding.domain == domain]
    redirect = next((binding.redirect for binding in chosen if binding.redirect), None)
    if redirect:
        return NoRoute(f"Gateway {redirect} redirects HTTP to HTTPS for host {host}")
    for binding in chosen:
        for index, rule in enumerate(_items(_spec(binding.virtual_service).get("http"))):
            rule = _mapping(rule)
            match = _istio_rule_match(rule, request, host, path, binding, gateway_port)
            if match is not None:
                where = f"http[{index}] of VirtualService {_key(binding.virtual_service)}"
                return _istio_action(rule, match, binding.virtual_service, path, where)
    return NoRoute(f"no http rule for {request.method} {path} in the routes of host {domain}")


def _istio_fqdn(host: str, namespace: str) -> str:
    """Istio's ResolveShortnameToFQDN: only a name without a dot is qualified."""
    host = host.lower()
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def _istio_gateway_key(reference: str, namespace: str) -> str | None:
    """`ns/name` of a VirtualService's gateway reference, None for the mesh."""
    if reference == "mesh":
        return None
    if "/" in reference:
        scope, _, name = reference.partition("/")
        return f"{namespace if scope == '.' else scope}/{name}"
    if "." in reference:  # legacy name.ns[.svc.cluster.local]
        name, _, rest = reference.partition(".")
        return f"{rest.partition('.')[0]}/{name}"
    return f"{namespace}/{reference}"


def _istio_binding(
    virtual_service: Obj, host: str, gateways: Sequence[Obj], port: int, reasons: list[str]
) -> _Binding | None:
    namespace = _namespace(virtual_service)
    spec = _spec(virtual_service)
    hosts = [_istio_fqdn(str(entry), namespace) for entry in _items(spec.get("hosts"))]
    own = [pattern for pattern in hosts if host_matches(pattern, host)]
    if not own:
        reasons.append(f"VirtualService {_key(virtual_service)} hosts {hosts} do not match {host}")
        return None
    domains: list[str] = []
    through: set[str] = set()
    redirect: str | None = None
    references = (_istio_gateway_key(str(ref), namespace) for ref in _items(spec.get("gateways")))
    keys = [key for key in references if key is not None]
    for key in keys:
        gateway = _find(gateways, key)
        if gateway is None:
            reasons.append(
                f"Gateway {key} of VirtualService {_key(virtual_service)} does not exist"
            )
            continue
        servers = _istio_servers(gateway, port, namespace, host)
        if not servers:
            reasons.append(
                f"Gateway {key} has no server on port {port} for {host} open to {namespace}"
            )
            continue
        through.add(key)
        for pattern, server in servers:
            domains.extend(_narrower(pattern, mine) for mine in own)
            redirect = redirect or (key if _istio_redirects(server) else None)
    if not domains:
        if not keys:
            reasons.append(f"VirtualService {_key(virtual_service)} is bound to no Gateway")
        return None
    return _Binding(virtual_service, max(domains, key=_specificity), frozenset(through), redirect)


def _istio_servers(gateway: Obj, port: int, namespace: str, host: str) -> list[tuple[str, Obj]]:
    """(host pattern, server) of each server of the Gateway that takes this request from a
    VirtualService in `namespace`."""
    found: list[tuple[str, Obj]] = []
    for server in map(_mapping, _items(_spec(gateway).get("servers"))):
        if not _istio_serves_http(server, port):
            continue
        for entry in _items(server.get("hosts")):
            scope, _, pattern = str(entry).rpartition("/")
            admitted = scope in ("", "*") or scope == namespace
            if scope == ".":
                admitted = namespace == _namespace(gateway)
            if admitted and host_matches(pattern, host):
                found.append((pattern.lower(), server))
    return found


def _istio_serves_http(server: Obj, port: int) -> bool:
    listening = _mapping(server.get("port"))
    protocol = str(listening.get("protocol", "")).upper()
    mode = str(_mapping(server.get("tls")).get("mode", "")).upper()
    return (
        listening.get("number") == port
        and protocol in _ISTIO_HTTP
        and (protocol != "HTTPS" or mode not in _ISTIO_PASSTHROUGH)
    )


def _istio_redirects(server: Obj) -> bool:
    protocol = str(_mapping(server.get("port")).get("protocol", "")).upper()
    return protocol == "HTTP" and bool(_mapping(server.get("tls")).get("httpsRedirect"))


def _istio_rule_match(
    rule: Obj, request: Request, host: str, path: str, binding: _Binding, port: int
) -> Obj | None:
    """The first of the rule's matches the request meets (`{}` for a rule without any)."""
    matches = [_mapping(match) for match in _items(rule.get("match"))]
    if not matches:
        return {}
    for match in matches:
        if _istio_matches(match, request, host, path, binding, port):
            return match
    return None


def _istio_matches(
    match: Obj, request: Request, host: str, path: str, binding: _Binding, port: int
) -> bool:
    unmodelled = [name for name in _ISTIO_UNMODELLED if name in match]
    if unmodelled:
        raise NotImplementedError(f"Istio match fields {unmodelled} are not modelled")
    namespace = _namespace(binding.virtual_service)
    named = {_istio_gateway_key(str(ref), namespace) for ref in _items(match.get("gateways"))}
    headers = _lowered(request.headers)
    checks = (
        "uri" not in match
        or _string_matches(match["uri"], path, ignore_case=bool(match.get("ignoreUriCase"))),
        "method" not in match or _string_matches(match["method"], request.method),
        "authority" not in match or _string_matches(match["authority"], host),
        "port" not in match or match["port"] == port,
        "gateways" not in match or bool(named & binding.gateways),
        not match.get("queryParams"),
    )
    return all(checks) and all(
        str(name).lower() in headers and _string_matches(wanted, headers[str(name).lower()])
        for name, wanted in _mapping(match.get("headers")).items()
    )


def _string_matches(wanted: Any, value: str, *, ignore_case: bool = False) -> bool:
    """An Istio StringMatch; an empty one (a header's presence) matches anything."""
    wanted = _mapping(wanted)
    folded = value.lower() if ignore_case else value
    if "exact" in wanted:
        expected = str(wanted["exact"])
        return folded == (expected.lower() if ignore_case else expected)
    if "prefix" in wanted:
        expected = str(wanted["prefix"])
        return folded.startswith(expected.lower() if ignore_case else expected)
    if "regex" in wanted:
        return re.fullmatch(str(wanted["regex"]), value) is not None
    return True


def _istio_action(
    rule: Obj, match: Obj, virtual_service: Obj, path: str, where: str
) -> Backend | NoRoute:
    if "delegate" in rule:
        raise NotImplementedError(f"{where}: delegate VirtualServices are not modelled")
    if "redirect" in rule:
        return NoRoute(f"{where} answers with a redirect")
    if "directResponse" in rule:
        return NoRoute(f"{where} answers directly with a status")
    destination = _istio_destination([_mapping(entry) for entry in _items(rule.get("route"))])
    if destination is None:
        return NoRoute(f"{where} has no route destination")
    host = str(destination.get("host", ""))
    fqdn = _istio_fqdn(host, _namespace(virtual_service))
    name, _, rest = fqdn.partition(".")
    namespace, _, domain = rest.partition(".")
    if not name or not namespace or domain != CLUSTER_DOMAIN:
        return NoRoute(
            f"{where}: destination host {host!r} names no Service (Istio takes a dotted "
            f"name as fully qualified: use a short name or <name>.<ns>.{CLUSTER_DOMAIN})"
        )
    number = _mapping(destination.get("port")).get("number")
    if number is None:
        raise NotImplementedError(f"{where}: a destination without port.number needs Services")
    return Backend(namespace, name, int(number), _istio_rewrite(rule, match, path))


def _istio_destination(routes: list[Obj]) -> Obj | None:
    """A single destination takes everything; otherwise the first with weight > 0."""
    if not routes:
        return None
    weighted = [entry for entry in routes if int(entry.get("weight") or 0) > 0]
    chosen = routes[0] if len(routes) == 1 or not weighted else weighted[0]
    return _mapping(chosen.get("destination"))


def _istio_rewrite(rule: Obj, match: Obj, path: str) -> str:
    rewrite = _mapping(rule.get("rewrite"))
    regex = _mapping(rewrite.get("uriRegexRewrite"))
    if regex:
        return re.sub(str(regex.get("match", "")), str(regex.get("rewrite", "")), path)
    uri = rewrite.get("uri")
    if not uri:
        return path
    matched = _mapping(match.get("uri"))
    if "exact" in matched or "regex" in matched:
        return str(uri)
    prefix = str(matched.get("prefix") or "/")  # Envoy routes a match without a uri as "/"
    return str(uri) + path[len(prefix) :]


# Gateway API.


@dataclass(frozen=True)
class _Candidate:
    """A match of an attached HTTPRoute that the request meets."""

    precedence: tuple[int, ...]  # the smallest wins
    route: Obj
    rule: Obj
    match: Obj


def route_gateway_api(
    request: Request,
    *,
    http_routes: Sequence[Mapping[str, Any]],
    gateways: Sequence[Mapping[str, Any]],
    namespace_labels: Mapping[str, Mapping[str, str]],
    listener_port: int = 443,
) -> Backend | NoRoute:
    """Where a Gateway API implementation's listeners on `listener_port` send the request."""
    host = request_host(request.host)
    path = normalize_path(request.path)
    if path is None:
        return _refused_path(request)
    reasons: list[str] = []
    candidates: list[_Candidate] = []
    attached = False
    for order, route in enumerate(http_routes):
        domain = _attached_domain(route, host, gateways, namespace_labels, listener_port, reasons)
        if domain is None:
            continue
        attached = True
        candidates.extend(_candidates(route, order, domain, request, path))
    if not candidates:
        if attached:
            return NoRoute(f"no HTTPRoute rule matches {request.method} {path} for host {host}")
        return _because(f"no route for host {host} on port {listener_port}", reasons)
    best = min(candidates, key=lambda candidate: candidate.precedence)
    return _gateway_api_action(best, path)


def _candidates(
    route: Obj, order: int, domain: str, request: Request, path: str
) -> list[_Candidate]:
    found: list[_Candidate] = []
    for rule_index, rule in enumerate(map(_mapping, _items(_spec(route).get("rules")))):
        matches = [_mapping(match) for match in _items(rule.get("matches"))] or [{}]
        for match_index, match in enumerate(matches):
            if _gateway_api_matches(match, request, path):
                rank = (*_precedence(domain, match), order, rule_index, match_index)
                found.append(_Candidate(rank, route, rule, match))
    return found


def _attached_domain(
    route: Obj,
    host: str,
    gateways: Sequence[Obj],
    namespace_labels: Mapping[str, Mapping[str, str]],
    port: int,
    reasons: list[str],
) -> str | None:
    """The route's hostname for this host on the listener serving it, if it is attached."""
    best: str | None = None
    for reference in map(_mapping, _items(_spec(route).get("parentRefs"))):
        outcome = _attach(reference, route, host, gateways, namespace_labels, port)
        if isinstance(outcome, NoRoute):
            reasons.append(outcome.reason)
        else:
            best = outcome if best is None else _narrower(best, outcome)
    return best


def _attach(
    reference: Obj,
    route: Obj,
    host: str,
    gateways: Sequence[Obj],
    namespace_labels: Mapping[str, Mapping[str, str]],
    port: int,
) -> str | NoRoute:
    namespace = _namespace(route)
    kind = (reference.get("group", GATEWAY_API_GROUP), reference.get("kind", "Gateway"))
    if kind != (GATEWAY_API_GROUP, "Gateway"):
        return NoRoute(f"parentRef {kind} of HTTPRoute {_key(route)} is not a Gateway")
    key = f"{reference.get('namespace') or namespace}/{reference.get('name', '')}"
    gateway = _find(gateways, key)
    if gateway is None:
        return NoRoute(f"Gateway {key} of HTTPRoute {_key(route)} does not exist")
    listener = _listener(gateway, host, port)
    if listener is None:
        return NoRoute(f"Gateway {key} has no HTTP listener on port {port} for host {host}")
    name = listener.get("name")
    if reference.get("sectionName", name) != name or reference.get("port", port) != port:
        return NoRoute(f"HTTPRoute {_key(route)} is not attached to listener {name} of {key}")
    if not _admits_kind(listener):
        return NoRoute(f"listener {name} of Gateway {key} admits no HTTPRoute")
    labels = {**namespace_labels.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}
    if not _admits_namespace(listener, _namespace(gateway), namespace, labels):
        return NoRoute(f"route's namespace {namespace} not admitted by Gateway {key}")
    return _route_domain(route, str(listener.get("hostname") or "*").lower(), host)


def _listener(gateway: Obj, host: str, port: int) -> Obj | None:
    """The Gateway's listener that serves this host on this port: the most specific."""
    serving = [
        listener
        for listener in map(_mapping, _items(_spec(gateway).get("listeners")))
        if listener.get("port") == port
        and _serves_http(listener)
        and host_matches(str(listener.get("hostname") or "*"), host)
    ]
    return max(serving, key=lambda one: _specificity(str(one.get("hostname") or "*")), default=None)


def _serves_http(listener: Obj) -> bool:
    protocol = listener.get("protocol")
    mode = _mapping(listener.get("tls")).get("mode", "Terminate")
    return protocol == "HTTP" or (protocol == "HTTPS" and mode == "Terminate")


def _admits_kind(listener: Obj) -> bool:
    kinds = [
        _mapping(kind) for kind in _items(_mapping(listener.get("allowedRoutes")).get("kinds"))
    ]
    return not kinds or any(
        (kind.get("group", GATEWAY_API_GROUP), kind.get("kind")) == (GATEWAY_API_GROUP, "HTTPRoute")
        for kind in kinds
    )


def _admits_namespace(
    listener: Obj, gateway_namespace: str, namespace: str, labels: Mapping[str, str]
) -> bool:
    namespaces = _mapping(_mapping(listener.get("allowedRoutes")).get("namespaces"))
    source = namespaces.get("from", "Same")
    if source == "All":
        return True
    if source == "Selector":
        return "selector" in namespaces and _selects(_mapping(namespaces["selector"]), labels)
    return source == "Same" and namespace == gateway_namespace


def _selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (an empty one selects everything)."""
    if any(
        labels.get(key) != value for key, value in _mapping(selector.get("matchLabels")).items()
    ):
        return False
    for expression in map(_mapping, _items(selector.get("matchExpressions"))):
        key = str(expression.get("key"))
        values = {str(value) for value in _items(expression.get("values"))}
        operator = expression.get("operator")
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not held.get(str(operator), False):
            return False
    return True


def _route_domain(route: Obj, listener_host: str, host: str) -> str | NoRoute:
    hostnames = [str(name).lower() for name in _items(_spec(route).get("hostnames"))]
    if not hostnames:
        return listener_host
    matching = [name for name in hostnames if host_matches(name, host)]
    if not matching:
        return NoRoute(f"hostnames {hostnames} of HTTPRoute {_key(route)} do not match {host}")
    return _narrower(listener_host, max(matching, key=_specificity))


def _path_match(match: Obj) -> tuple[str, str]:
    """(type, value) of a match's path; the default is PathPrefix `/`."""
    path = _mapping(match.get("path"))
    return str(path.get("type", "PathPrefix")), str(path.get("value", "/"))


def _path_matches(kind: str, value: str, path: str) -> bool:
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        return path == prefix or path.startswith(prefix + "/")
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    return False  # an unknown type: the route is not Accepted


def _gateway_api_matches(match: Obj, request: Request, path: str) -> bool:
    headers = _lowered(request.headers)
    return (
        _path_matches(*_path_match(match), path)
        and match.get("method", request.method) == request.method
        and all(
            _header_matches(_mapping(wanted), headers) for wanted in _items(match.get("headers"))
        )
        and not _items(match.get("queryParams"))
    )


def _header_matches(wanted: Obj, headers: Mapping[str, str]) -> bool:
    value = headers.get(str(wanted.get("name", "")).lower())
    if value is None:
        return False
    if wanted.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(str(wanted.get("value", "")), value) is not None
    return value == wanted.get("value")


def _precedence(domain: str, match: Obj) -> tuple[int, ...]:
    exact_host, host_length = _specificity(domain)
    kind, value = _path_match(match)
    return (
        -int(exact_host),
        -host_length,
        -_PATH_RANK.get(kind, 0),
        -len(value),
        -int("method" in match),
        -len(_items(match.get("headers"))),
        -len(_items(match.get("queryParams"))),
    )


def _gateway_api_action(candidate: _Candidate, path: str) -> Backend | NoRoute:
    where = f"HTTPRoute {_key(candidate.route)}"
    for chosen in map(_mapping, _items(candidate.rule.get("filters"))):
        kind = chosen.get("type")
        if kind == "RequestRedirect":
            return NoRoute(f"a rule of {where} answers with a redirect")
        if kind == "ExtensionRef":
            raise NotImplementedError(f"{where}: ExtensionRef filters are not modelled")
        if kind == "URLRewrite":
            rewrite = _mapping(_mapping(chosen.get("urlRewrite")).get("path"))
            rewritten = _url_rewrite(rewrite, candidate.match, path, where)
            if isinstance(rewritten, NoRoute):
                return rewritten
            path = rewritten
    return _backend(candidate, path, where)


def _url_rewrite(rewrite: Obj, match: Obj, path: str, where: str) -> str | NoRoute:
    kind = rewrite.get("type")
    if kind is None:
        return path
    if kind == "ReplaceFullPath":
        return str(rewrite.get("replaceFullPath", "/"))
    if kind == "ReplacePrefixMatch":
        match_kind, prefix = _path_match(match)
        if match_kind != "PathPrefix":
            return NoRoute(
                f"{where}: ReplacePrefixMatch without a PathPrefix match is not Accepted"
            )
        remainder = path[len(prefix.rstrip("/")) :]
        return (str(rewrite.get("replacePrefixMatch", "/")).rstrip("/") + remainder) or "/"
    raise NotImplementedError(f"{where}: URLRewrite path type {kind!r} is not modelled")


def _backend(candidate: _Candidate, path: str, where: str) -> Backend | NoRoute:
    references = [_mapping(ref) for ref in _items(candidate.rule.get("backendRefs"))]
    if not references:
        return NoRoute(f"a rule of {where} has no backendRefs (the gateway answers 500)")
    reference = next((ref for ref in references if int(ref.get("weight", 1)) > 0), None)
    if reference is None:
        return NoRoute(f"every backendRef of a rule of {where} has weight 0 (500)")
    kind = (reference.get("group", ""), reference.get("kind", "Service"))
    if kind != ("", "Service"):
        return NoRoute(f"{where}: backendRef {kind} is not a Service")
    own = _namespace(candidate.route)
    namespace = str(reference.get("namespace") or own)
    name = str(reference.get("name", ""))
    if namespace != own:
        return NoRoute(f"cross-namespace backend without ReferenceGrant: {where} -> {namespace}")
    if "port" not in reference:
        return NoRoute(f"{where}: backendRef to Service {namespace}/{name} has no port")
    return Backend(namespace, name, int(reference["port"]), path)
