"""Kubernetes NetworkPolicy (networking.k8s.io/v1): may this connection be opened?

A pure evaluator of the API's documented semantics, for fakes that must decide what a
cluster's network would let through (not what a manifest claims). Modelled:

- isolation per direction: a pod selected by no policy of a direction (`policyTypes`)
  is non-isolated for it and everything passes; once selected, only what some rule of
  some such policy allows passes (rules and policies are a union, never a subtraction);
- `policyTypes` defaulting as the API server does it (pkg/apis/networking/v1/defaults.go):
  "Ingress", plus "Egress" when `egress` holds at least one rule;
- label selectors (matchLabels; matchExpressions In, NotIn, Exists, DoesNotExist);
- peers: podSelector (the policy's namespace), namespaceSelector, both in one peer (AND),
  ipBlock with `except`, IPv4 and IPv6;
- ports: number, `endPort` range, named ports of the destination pod, protocol (TCP by
  default; SCTP is just another name to compare);
- a namespace's `kubernetes.io/metadata.name` label, which the API server always sets.

Left out: whatever a network plugin adds or differs on. ipBlock matches the address
given, pod or not (the docs mean it for cluster-external addresses and say pod IPs are
implementation-defined there); no SNAT/DNAT (Services, load balancers: callers pass the
addresses the plugin would see); no host-network pods, no node-to-local-pod exemption
(kubelet probes), no reply traffic (a connection is judged at its opening only); a
named port carries no protocol of its own. Policies the API server would reject raise
ValueError instead of being half-evaluated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

INGRESS = "Ingress"
EGRESS = "Egress"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
# `kubectl apply` of a policy without metadata.namespace puts it here.
DEFAULT_NAMESPACE = "default"

Policy = Mapping[str, Any]
NamespaceLabels = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Endpoint:
    """One end of a connection: a pod (namespace + labels + ip) or an address outside any pod (pod_labels None)."""

    ip: str
    namespace: str | None = None  # None: not a pod (e.g. an address outside the cluster)
    pod_labels: Mapping[str, str] | None = None
    # A pod's container ports by name: what a policy's named `port` resolves to.
    named_ports: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.ip)  # a typo'd address fails here, not as a silent mismatch
        if (self.namespace is None) != (self.pod_labels is None):
            raise ValueError(f"{self.ip}: a pod has both a namespace and labels, a non-pod neither")

    @property
    def is_pod(self) -> bool:
        return self.pod_labels is not None


def allows(
    policies: Iterable[Policy],
    namespace_labels: NamespaceLabels,
    *,
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `source` may open a connection to `destination` on `port`/`protocol`: it must
    pass as egress from the source (if a pod) and as ingress to the destination (if a pod)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    listed = list(policies)  # read once per direction
    connection = _Connection(source, destination, port, protocol)
    return all(
        _admitted(listed, direction, namespace_labels, connection)
        for direction in (EGRESS, INGRESS)
    )


def policy_types(spec: Mapping[str, Any]) -> frozenset[str]:
    """The directions a policy isolates, defaulted as the API server does when none are given."""
    declared: Sequence[str] = spec.get("policyTypes") or ()
    if not declared:
        # `egress: []` adds nothing: the server tests len(spec.Egress) != 0.
        return frozenset({INGRESS, EGRESS}) if spec.get("egress") else frozenset({INGRESS})
    unknown = set(declared) - {INGRESS, EGRESS}
    if unknown:
        raise ValueError(f"unknown policyTypes {sorted(unknown)}")
    return frozenset(declared)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every matchExpressions
    requirement holds. None and {} select everything."""
    if not selector:
        return True
    match_labels: Mapping[str, str] = selector.get("matchLabels") or {}
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    expressions: Sequence[Mapping[str, Any]] = selector.get("matchExpressions") or ()
    return all(_requirement_holds(expression, labels) for expression in expressions)


def _requirement_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key: str = expression["key"]
    operator: str = expression["operator"]
    values: Sequence[str] = expression.get("values") or ()
    if operator in ("In", "NotIn"):
        if not values:
            raise ValueError(f"{operator} on {key!r} needs values")
        found = key in labels and labels[key] in values
        return found if operator == "In" else not found  # NotIn also holds when key is absent
    if operator in ("Exists", "DoesNotExist"):
        if values:
            raise ValueError(f"{operator} on {key!r} takes no values")
        return (key in labels) == (operator == "Exists")
    raise ValueError(f"unknown selector operator {operator!r}")


@dataclass(frozen=True)
class _Connection:
    source: Endpoint
    destination: Endpoint
    port: int
    protocol: str


def _admitted(
    policies: Sequence[Policy],
    direction: str,
    namespace_labels: NamespaceLabels,
    connection: _Connection,
) -> bool:
    """One direction's verdict: the subject pod's isolating policies, or open if none."""
    source, destination = connection.source, connection.destination
    subject, peer = (source, destination) if direction == EGRESS else (destination, source)
    if not subject.is_pod:
        return True  # only pods are subject to NetworkPolicy
    isolating = [
        policy
        for policy in policies
        if direction in policy_types(policy["spec"]) and _selects(policy, subject)
    ]
    if not isolating:
        return True
    return any(
        _rule_allows(rule, direction, _namespace_of(policy), namespace_labels, peer)
        and _ports_allow(rule.get("ports"), connection)
        for policy in isolating
        for rule in _rules(policy, direction)
    )


def _namespace_of(policy: Policy) -> str:
    namespace: str = policy.get("metadata", {}).get("namespace") or DEFAULT_NAMESPACE
    return namespace


def _selects(policy: Policy, pod: Endpoint) -> bool:
    """A policy governs only pods of its own namespace that its podSelector matches."""
    if pod.pod_labels is None or pod.namespace != _namespace_of(policy):
        return False
    return selector_matches(policy["spec"].get("podSelector"), pod.pod_labels)


def _rules(policy: Policy, direction: str) -> Sequence[Mapping[str, Any]]:
    # Missing or [] with the direction isolated: no rule, so nothing passes.
    rules: Sequence[Mapping[str, Any]] = policy["spec"].get(direction.lower()) or ()
    return rules


def _rule_allows(
    rule: Mapping[str, Any],
    direction: str,
    policy_namespace: str,
    namespace_labels: NamespaceLabels,
    peer: Endpoint,
) -> bool:
    peers: Sequence[Mapping[str, Any]] = rule.get("from" if direction == INGRESS else "to") or ()
    if not peers:
        return True  # no from/to (or an empty one): every peer
    return any(_peer_matches(entry, policy_namespace, namespace_labels, peer) for entry in peers)


def _peer_matches(
    entry: Mapping[str, Any],
    policy_namespace: str,
    namespace_labels: NamespaceLabels,
    peer: Endpoint,
) -> bool:
    pod_selector = entry.get("podSelector")
    namespace_selector = entry.get("namespaceSelector")
    ip_block = entry.get("ipBlock")
    if ip_block is not None:
        if pod_selector is not None or namespace_selector is not None:
            raise ValueError("an ipBlock peer may not also carry selectors")
        return _in_ip_block(ip_block, peer.ip)
    if pod_selector is None and namespace_selector is None:
        raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
    if peer.namespace is None or peer.pod_labels is None:
        return False  # selectors pick pods; an outside address has no labels to match
    if namespace_selector is None:
        in_namespace = peer.namespace == policy_namespace  # podSelector alone: own namespace
    else:
        labels = _labels_of_namespace(namespace_labels, peer.namespace)
        in_namespace = selector_matches(namespace_selector, labels)
    # Both selectors in one peer: AND; podSelector absent: every pod of those namespaces.
    return in_namespace and selector_matches(pod_selector, peer.pod_labels)


def _labels_of_namespace(namespace_labels: NamespaceLabels, name: str) -> dict[str, str]:
    # The API server sets this label to the name on every namespace (v1.22+), unforgeably.
    return {**namespace_labels.get(name, {}), NAMESPACE_NAME_LABEL: name}


def _in_ip_block(ip_block: Mapping[str, Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    # The server parses CIDRs "sloppily": host bits may be set.
    block = ipaddress.ip_network(ip_block["cidr"], strict=False)
    excluded = [ipaddress.ip_network(cidr, strict=False) for cidr in ip_block.get("except") or ()]
    for hole in excluded:
        # As the server validates it: each `except` a strict subset of `cidr`.
        if hole.network_address not in block or hole.prefixlen <= block.prefixlen:
            raise ValueError(f"ipBlock except {hole} is not a strict subset of {block}")
    if address.version != block.version:
        return False
    return address in block and not any(address in hole for hole in excluded)


def _ports_allow(ports: Sequence[Mapping[str, Any]] | None, connection: _Connection) -> bool:
    if not ports:
        return True  # no ports (or an empty list): every port and protocol
    return any(_port_matches(entry, connection) for entry in ports)


def _port_matches(entry: Mapping[str, Any], connection: _Connection) -> bool:
    port = connection.port
    if entry.get("protocol", "TCP") != connection.protocol:
        return False
    wanted: int | str | None = entry.get("port")
    end: int | None = entry.get("endPort")
    if wanted is None:
        if end is not None:
            raise ValueError("endPort needs port")
        return True  # protocol only: every port of it
    if isinstance(wanted, str):
        if end is not None:
            raise ValueError("endPort needs a numeric port")
        # Resolved against the destination pod's container ports; an outside address has none.
        return connection.destination.named_ports.get(wanted) == port
    if end is None:
        return wanted == port
    if end < wanted:
        raise ValueError(f"endPort {end} is below port {wanted}")
    return wanted <= port <= end
