"""The NetworkPolicy evaluator against the examples of the Kubernetes docs
(kubernetes.io/docs/concepts/services-networking/network-policies/), then the agent
policy the project generates."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.manifests import ClusterConfig, deployment, network_policy
from tests.fakes.network_policy import (
    NAMESPACE_NAME_LABEL,
    Endpoint,
    allows,
    policy_types,
    selector_matches,
)

JsonDict = dict[str, Any]

NAMESPACES = {
    "default": {},
    "myproject": {"project": "myproject"},
    "other": {},
    "alice-ns": {"user": "alice"},
    "bob-ns": {"user": "bob"},
}


def pod(namespace: str, ip: str, **labels: str) -> Endpoint:
    return Endpoint(ip=ip, namespace=namespace, pod_labels=labels)


def outside(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


DB = pod("default", "10.244.0.10", role="db")
FRONTEND = pod("default", "10.244.0.11", role="frontend")
CACHE = pod("default", "10.244.0.12", role="cache")
MYPROJECT_POD = pod("myproject", "10.244.1.10", app="reporting")
OTHER_FRONTEND = pod("other", "10.244.2.10", role="frontend")
PUBLIC = outside("203.0.113.7")


def check(
    policies: list[JsonDict],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    return allows(
        policies, NAMESPACES, source=source, destination=destination, port=port, protocol=protocol
    )


def load(text: str) -> JsonDict:
    loaded: JsonDict = yaml.safe_load(text)
    return loaded


# The docs' "NetworkPolicy resource" example.
TEST_NETWORK_POLICY = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
""")

# The docs' "Default policies": written without a namespace, so `kubectl apply` puts
# them in `default` (and so does the evaluator).
DEFAULT_DENY_INGRESS = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
spec:
  podSelector: {}
  policyTypes:
  - Ingress
""")
ALLOW_ALL_INGRESS = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
""")
DEFAULT_DENY_EGRESS = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
spec:
  podSelector: {}
  policyTypes:
  - Egress
""")
ALLOW_ALL_EGRESS = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-egress
spec:
  podSelector: {}
  egress:
  - {}
  policyTypes:
  - Egress
""")
DEFAULT_DENY_ALL = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
spec:
  podSelector: {}
  policyTypes:
  - Ingress
  - Egress
""")

# The docs' "Targeting a range of ports" example.
MULTI_PORT_EGRESS = load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
""")


def in_namespace(policy: JsonDict, namespace: str) -> JsonDict:
    return {**policy, "metadata": {**policy["metadata"], "namespace": namespace}}


# --- test-network-policy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "port", "protocol", "allowed"),
    [
        (FRONTEND, 6379, "TCP", True),  # podSelector: role=frontend in the policy's namespace
        (MYPROJECT_POD, 6379, "TCP", True),  # namespaceSelector: any pod of project=myproject
        (outside("172.17.0.5"), 6379, "TCP", True),  # inside the ipBlock
        (outside("172.17.1.5"), 6379, "TCP", False),  # in its `except`
        (outside("172.18.0.5"), 6379, "TCP", False),  # outside the ipBlock
        (OTHER_FRONTEND, 6379, "TCP", False),  # role=frontend, but another namespace
        (CACHE, 6379, "TCP", False),  # the right namespace, the wrong role
        (FRONTEND, 6380, "TCP", False),  # only 6379
        (FRONTEND, 6379, "UDP", False),  # only TCP
    ],
)
def test_example_ingress_to_db(source: Endpoint, port: int, protocol: str, allowed: bool) -> None:
    assert check([TEST_NETWORK_POLICY], source, DB, port, protocol) is allowed


@pytest.mark.parametrize(
    ("destination", "port", "allowed"),
    [
        (outside("10.0.0.7"), 5978, True),
        (outside("10.0.0.7"), 5979, False),
        (outside("10.0.1.7"), 5978, False),
        # FRONTEND itself is not isolated, but db's egress is: only 10.0.0.0/24.
        (FRONTEND, 80, False),
        (PUBLIC, 443, False),
    ],
)
def test_example_egress_from_db(destination: Endpoint, port: int, allowed: bool) -> None:
    assert check([TEST_NETWORK_POLICY], DB, destination, port) is allowed


def test_example_leaves_unselected_pods_open() -> None:
    assert check([TEST_NETWORK_POLICY], PUBLIC, CACHE, 1234)
    assert check([TEST_NETWORK_POLICY], CACHE, PUBLIC, 1234, "UDP")
    assert check([TEST_NETWORK_POLICY], OTHER_FRONTEND, FRONTEND, 80)


# --- default policies -----------------------------------------------------------------


def test_default_deny_ingress() -> None:
    policies = [DEFAULT_DENY_INGRESS]
    assert not check(policies, FRONTEND, CACHE, 80)
    assert not check(policies, PUBLIC, DB, 6379)
    assert not check(policies, OTHER_FRONTEND, FRONTEND, 80)
    assert check(policies, CACHE, PUBLIC, 443)  # egress stays open
    assert check(policies, PUBLIC, OTHER_FRONTEND, 80)  # other namespaces are untouched


def test_allow_all_ingress() -> None:
    assert check([ALLOW_ALL_INGRESS], PUBLIC, CACHE, 80)
    assert check([ALLOW_ALL_INGRESS], OTHER_FRONTEND, DB, 6379, "UDP")
    # Policies add up: allow-all wins over default-deny, in either order.
    assert check([DEFAULT_DENY_INGRESS, ALLOW_ALL_INGRESS], PUBLIC, CACHE, 80)
    assert check([ALLOW_ALL_INGRESS, DEFAULT_DENY_INGRESS], PUBLIC, CACHE, 80)


def test_default_deny_egress() -> None:
    policies = [DEFAULT_DENY_EGRESS]
    assert not check(policies, CACHE, PUBLIC, 443)
    assert not check(policies, CACHE, OTHER_FRONTEND, 80)
    assert not check(policies, CACHE, DB, 6379)
    assert check(policies, PUBLIC, CACHE, 80)  # ingress stays open
    assert check(policies, OTHER_FRONTEND, PUBLIC, 443)  # other namespaces are untouched


def test_allow_all_egress() -> None:
    assert check([ALLOW_ALL_EGRESS], CACHE, PUBLIC, 443)
    assert check([DEFAULT_DENY_EGRESS, ALLOW_ALL_EGRESS], CACHE, PUBLIC, 53, "UDP")


def test_default_deny_all() -> None:
    policies = [DEFAULT_DENY_ALL]
    assert not check(policies, PUBLIC, CACHE, 80)
    assert not check(policies, CACHE, PUBLIC, 443)
    assert not check(policies, FRONTEND, DB, 6379)
    assert check(policies, OTHER_FRONTEND, PUBLIC, 443)
    assert check(policies, PUBLIC, OTHER_FRONTEND, 80)


# --- endPort --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "port", "protocol", "allowed"),
    [
        ("10.0.0.9", 32000, "TCP", True),
        ("10.0.0.9", 32500, "TCP", True),
        ("10.0.0.9", 32768, "TCP", True),  # endPort is inclusive
        ("10.0.0.9", 31999, "TCP", False),
        ("10.0.0.9", 32769, "TCP", False),
        ("10.0.0.9", 32000, "UDP", False),
        ("10.0.1.9", 32000, "TCP", False),
    ],
)
def test_end_port_range(ip: str, port: int, protocol: str, allowed: bool) -> None:
    assert check([MULTI_PORT_EGRESS], DB, outside(ip), port, protocol) is allowed


def test_end_port_below_port_is_rejected() -> None:
    broken = load("""
metadata: {name: broken, namespace: default}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 9000, endPort: 8000}]
""")
    with pytest.raises(ValueError, match="endPort"):
        check([broken], PUBLIC, CACHE, 8500)


# --- Behavior of to and from selectors: AND vs OR -------------------------------------

ONE_PEER_AND = load("""
metadata: {name: alice-clients, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
      podSelector:
        matchLabels:
          role: client
""")
TWO_PEERS_OR = load("""
metadata: {name: alice-or-clients, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          user: alice
    - podSelector:
        matchLabels:
          role: client
""")


@pytest.mark.parametrize(
    ("source", "with_and", "with_or"),
    [
        (pod("alice-ns", "10.244.3.1", role="client"), True, True),
        (pod("alice-ns", "10.244.3.2", role="batch"), False, True),  # any pod of alice's
        (pod("default", "10.244.0.20", role="client"), False, True),  # a client next to db
        (pod("bob-ns", "10.244.4.1", role="client"), False, False),  # nobody's selector
        (outside("198.51.100.1"), False, False),
    ],
)
def test_one_peer_is_and_two_peers_are_or(source: Endpoint, with_and: bool, with_or: bool) -> None:
    assert check([ONE_PEER_AND], source, DB, 5432) is with_and
    assert check([TWO_PEERS_OR], source, DB, 5432) is with_or


# --- ipBlock --------------------------------------------------------------------------

IPV6_BLOCK = load("""
metadata: {name: v6, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock:
        cidr: 2001:db8::/32
        except: [2001:db8:1::/48]
""")


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("2001:db8::5", True),
        ("2001:db8:2::5", True),
        ("2001:db8:1::5", False),  # the except
        ("2001:db9::5", False),
        ("10.0.0.1", False),  # an IPv4 address is never in an IPv6 block
    ],
)
def test_ipv6_ip_block_with_except(ip: str, allowed: bool) -> None:
    assert check([IPV6_BLOCK], outside(ip), CACHE, 80) is allowed


def test_ip_block_matches_a_pod_by_its_ip() -> None:
    pod_in_block = pod("other", "172.17.0.9", role="anything")
    assert check([TEST_NETWORK_POLICY], pod_in_block, DB, 6379)


def test_except_outside_the_cidr_is_rejected() -> None:
    broken = load("""
metadata: {name: broken, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]
""")
    with pytest.raises(ValueError, match="strict subset"):
        check([broken], PUBLIC, CACHE, 80)


# --- named ports ----------------------------------------------------------------------

NAMED_PORT = load("""
metadata: {name: http-only, namespace: default}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: http
  egress:
  - ports:
    - port: http
""")


def test_named_port_resolves_against_the_destination_pod() -> None:
    web = Endpoint("10.244.0.30", "default", {"app": "web"}, named_ports={"http": 8080})
    admin = Endpoint("10.244.0.31", "default", {"app": "admin"}, named_ports={"http": 9090})
    assert check([NAMED_PORT], PUBLIC, web, 8080)
    assert not check([NAMED_PORT], PUBLIC, web, 80)
    assert check([NAMED_PORT], PUBLIC, admin, 9090)
    assert not check([NAMED_PORT], PUBLIC, admin, 8080)
    assert not check([NAMED_PORT], PUBLIC, CACHE, 8080)  # no port of that name
    assert not check([NAMED_PORT], web, PUBLIC, 8080)  # an outside address names no ports


# --- policyTypes defaults and namespaces ----------------------------------------------


def without_policy_types(policy: JsonDict) -> JsonDict:
    spec = {key: value for key, value in policy["spec"].items() if key != "policyTypes"}
    return {**policy, "spec": spec}


def test_default_policy_types() -> None:
    assert policy_types({"podSelector": {}}) == {"Ingress"}
    assert policy_types({"podSelector": {}, "egress": [{}]}) == {"Ingress", "Egress"}
    # The server defaults on len(egress) != 0: an empty list does not add Egress.
    assert policy_types({"podSelector": {}, "egress": []}) == {"Ingress"}
    assert policy_types({"policyTypes": [], "egress": [{}]}) == {"Ingress", "Egress"}
    assert policy_types({"policyTypes": ["Egress"]}) == {"Egress"}


def test_egress_section_isolates_egress_without_policy_types() -> None:
    implied = without_policy_types(TEST_NETWORK_POLICY)
    assert check([implied], DB, outside("10.0.0.7"), 5978)
    assert not check([implied], DB, outside("10.0.1.7"), 5978)
    assert not check([implied], PUBLIC, DB, 6379)


def test_ingress_only_policy_leaves_egress_open() -> None:
    ingress_only = load("""
metadata: {name: ingress-only, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: frontend}}}]
""")
    assert check([ingress_only], DB, PUBLIC, 443)
    assert check([ingress_only], FRONTEND, DB, 6379)
    assert not check([ingress_only], CACHE, DB, 6379)


def test_selector_only_policy_denies_all_ingress() -> None:
    bare = load("""
metadata: {name: bare, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
""")
    assert not check([bare], FRONTEND, DB, 6379)
    assert check([bare], DB, PUBLIC, 443)
    assert check([bare], PUBLIC, CACHE, 80)


def test_policy_in_another_namespace_does_not_isolate() -> None:
    elsewhere = in_namespace(DEFAULT_DENY_ALL, "other")
    assert check([elsewhere], PUBLIC, DB, 6379)
    assert check([elsewhere], DB, PUBLIC, 443)
    assert not check([elsewhere], PUBLIC, OTHER_FRONTEND, 80)
    assert not check([elsewhere], OTHER_FRONTEND, PUBLIC, 443)


def test_source_egress_isolation_blocks_what_the_destination_admits() -> None:
    admits_all = in_namespace(ALLOW_ALL_INGRESS, "other")
    assert check([admits_all], CACHE, OTHER_FRONTEND, 80)
    assert not check([admits_all, DEFAULT_DENY_EGRESS], CACHE, OTHER_FRONTEND, 80)


def test_namespace_name_label_is_the_namespace_name() -> None:
    by_name = load("""
metadata: {name: from-myproject, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: In, values: [myproject]}
""")
    assert check([by_name], MYPROJECT_POD, CACHE, 80)
    assert not check([by_name], OTHER_FRONTEND, CACHE, 80)
    # A namespace cannot claim another's name: the server owns that label.
    forged = {**NAMESPACES, "other": {NAMESPACE_NAME_LABEL: "myproject"}}
    assert not allows([by_name], forged, source=OTHER_FRONTEND, destination=CACHE, port=80)


# --- label selectors ------------------------------------------------------------------

LABELS = {"app": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "web", "tier": "back"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}, False),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"tier": "front"},
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}],
            },
            False,
        ),
    ],
)
def test_selector_matches(selector: JsonDict | None, matches: bool) -> None:
    assert selector_matches(selector, LABELS) is matches


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "app", "operator": "Equals", "values": ["web"]},
        {"key": "app", "operator": "In", "values": []},
        {"key": "app", "operator": "Exists", "values": ["web"]},
    ],
)
def test_invalid_selector_is_rejected(expression: JsonDict) -> None:
    with pytest.raises(ValueError):
        selector_matches({"matchExpressions": [expression]}, LABELS)


def test_endpoint_must_be_a_pod_or_an_address() -> None:
    with pytest.raises(ValueError):
        Endpoint(ip="not-an-ip")
    with pytest.raises(ValueError):
        Endpoint(ip="10.0.0.1", namespace="default")


# --- the agent policy the project generates -------------------------------------------

CLUSTER = ClusterConfig(
    namespace="hatchbot-agents",
    image="ghcr.io/example/hatchbot:test",
    router="istio",
    public_url="https://bots.example.com",
)
AGENT_NAMESPACES: dict[str, dict[str, str]] = {
    name: {} for name in ("hatchbot-agents", "istio-system", "hatchbot-system", "kube-system")
}


def agent_spec(agent_id: str) -> AgentSpec:
    return AgentSpec(
        agent_id=agent_id,
        secrets=AgentSecrets(
            bot_token=SecretStr("7000000001:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            webhook_secret=SecretStr("hook_secret_value_123"),
            gateway_key=SecretStr("sk-agentkeyagentkeyagentkey"),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="Be brief.",
    )


def agent_pod(spec: AgentSpec, ip: str) -> Endpoint:
    """The pod the agent's Deployment runs: its template's labels and named ports."""
    template = deployment(spec, CLUSTER)["spec"]["template"]
    ports = {
        port["name"]: port["containerPort"]
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
    }
    return Endpoint(ip, CLUSTER.namespace, template["metadata"]["labels"], named_ports=ports)


AGENT = agent_spec("a1b2c3")
AGENT_POD = agent_pod(AGENT, "10.244.5.10")
AGENT_POLICY = network_policy(AGENT, CLUSTER)
INGRESS_GATEWAY = pod("istio-system", "10.244.6.2", app="istio-ingressgateway")
MANAGER = pod("hatchbot-system", "10.244.7.2", **{"app.kubernetes.io/component": "manager"})
LLM_GATEWAY = pod("hatchbot-system", "10.244.7.3", **{"app.kubernetes.io/component": "llm-gateway"})
KUBE_DNS = pod("kube-system", "10.244.8.2", **{"k8s-app": "kube-dns"})


def agent_check(
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
    *,
    also: tuple[JsonDict, ...] = (),
) -> bool:
    """Under AGENT_POLICY (plus `also`), with namespaces labelled only by their names."""
    return allows(
        [AGENT_POLICY, *also],
        AGENT_NAMESPACES | {"default": {}},
        source=source,
        destination=destination,
        port=port,
        protocol=protocol,
    )


@pytest.mark.parametrize(
    ("source", "port", "protocol", "allowed"),
    [
        (INGRESS_GATEWAY, 8080, "TCP", True),  # webhooks
        (MANAGER, 8080, "TCP", True),  # probes
        (pod("default", "10.244.9.2", app="curious"), 8080, "TCP", False),
        (INGRESS_GATEWAY, 9090, "TCP", False),
        (MANAGER, 9090, "TCP", False),
        (INGRESS_GATEWAY, 8080, "UDP", False),
        (outside("203.0.113.9"), 8080, "TCP", False),
    ],
)
def test_agent_policy_ingress(source: Endpoint, port: int, protocol: str, allowed: bool) -> None:
    assert agent_check(source, AGENT_POD, port, protocol) is allowed


@pytest.mark.parametrize(
    ("destination", "port", "protocol", "allowed"),
    [
        (KUBE_DNS, 53, "UDP", True),
        (KUBE_DNS, 53, "TCP", True),
        (LLM_GATEWAY, 8080, "TCP", True),
        (outside("149.154.167.220"), 443, "TCP", True),  # Telegram
        (outside("149.154.167.220"), 80, "TCP", False),
        (MANAGER, 8080, "TCP", False),  # only the gateway component of hatchbot-system
        (pod("default", "10.244.9.3", **{"k8s-app": "kube-dns"}), 53, "UDP", False),
        (outside("10.96.0.1"), 443, "TCP", False),  # the API server's Service address
        (outside("169.254.169.254"), 443, "TCP", False),  # cloud metadata
        (outside("192.168.1.1"), 443, "TCP", False),
    ],
)
def test_agent_policy_egress(
    destination: Endpoint, port: int, protocol: str, allowed: bool
) -> None:
    assert agent_check(AGENT_POD, destination, port, protocol) is allowed


def test_agents_cannot_reach_each_other() -> None:
    other = agent_spec("d4e5f6")
    other_pod = agent_pod(other, "10.244.5.11")
    other_policy = network_policy(other, CLUSTER)
    assert not agent_check(other_pod, AGENT_POD, 8080, also=(other_policy,))
    assert not agent_check(AGENT_POD, other_pod, 8080, also=(other_policy,))
    assert agent_check(INGRESS_GATEWAY, other_pod, 8080, also=(other_policy,))
