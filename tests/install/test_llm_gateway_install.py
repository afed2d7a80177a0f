"""`k8s/`: the LLM gateway is installed valid, restricted, unprivileged and reachable
only from agents and the manager; the agents namespace denies everything by default."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fakes.install import MANAGER_ACCOUNT, rendered
from tests.fakes.schemas import SchemaError, validate
from tests.install.test_k8s_install import VARIANTS, settings_from_config_map, violations

JsonDict = dict[str, Any]
NAMESPACE = "hatchbot-system"
GATEWAY = "hatchbot-llm-gateway"  # the ServiceAccount, Deployment, Service, PDB and policy
GATEWAY_ACCOUNT = (NAMESPACE, GATEWAY)
SECRET = "hatchbot-secrets"
# What the gateway may read from hatchbot-secrets: the database, the vault's keys and
# the providers' platform keys. Never MANAGER_BOT_TOKEN: it cannot speak as the manager.
REQUIRED_SECRET_KEYS = {"DATABASE_URL", "ENCRYPTION_KEYS"}
PROVIDER_SECRET_KEYS = {
    "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY",
}  # fmt: skip
GATEWAY_PORT = 8080


def installed(variant: str, kind: str, name: str, namespace: str = NAMESPACE) -> JsonDict:
    """The one object of this kind, name and namespace that the install creates."""
    (found,) = [
        o for o in rendered(variant)
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and o["metadata"].get("namespace") == namespace
    ]  # fmt: skip
    return found


def gateway_container(variant: str) -> JsonDict:
    pod_spec = installed(variant, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["name"] == "gateway"
    return container


def selects(selector: JsonDict, labels: dict[str, str]) -> bool:
    """Whether a matchLabels-only LabelSelector selects a pod with these labels."""
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are expected here"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pod_labels(variant: str, deployment: str) -> dict[str, str]:
    labels: dict[str, str] = installed(variant, "Deployment", deployment)["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_gateway_object_and_the_default_deny_validate_against_their_schemas(
    variant: str,
) -> None:
    new_objects = [
        installed(variant, "ServiceAccount", GATEWAY),
        installed(variant, "Deployment", GATEWAY),
        installed(variant, "Service", GATEWAY),
        installed(variant, "PodDisruptionBudget", GATEWAY),
        installed(variant, "NetworkPolicy", GATEWAY),
        installed(variant, "NetworkPolicy", "default-deny", namespace="agents"),
    ]
    for obj in new_objects:
        validate(obj)
        # The schema really knows the kind: a field it does not declare is an error.
        broken = {**obj, "notAField": 1}
        with pytest.raises(SchemaError, match="notAField"):
            validate(broken)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gateway_pod_meets_the_restricted_standard_like_the_manager(variant: str) -> None:
    gateway = installed(variant, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    manager = installed(variant, "Deployment", "hatchbot-manager")["spec"]["template"]["spec"]
    assert violations(gateway) == []
    (container,) = gateway["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Exactly the manager's pod and container security, not merely "restricted enough".
    assert gateway["securityContext"] == manager["securityContext"]
    assert gateway["securityContext"]["runAsUser"] == gateway["securityContext"]["runAsGroup"]
    assert gateway["securityContext"]["runAsUser"] == 10001
    (manager_container,) = manager["containers"]
    assert container["securityContext"] == manager_container["securityContext"]
    assert gateway["enableServiceLinks"] is False
    # The only writable place is an emptyDir on /tmp.
    assert gateway["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gateway_runs_the_managers_image_as_a_gateway(variant: str) -> None:
    container = gateway_container(variant)
    manager_pod = installed(variant, "Deployment", "hatchbot-manager")["spec"]["template"]
    (manager_container,) = manager_pod["spec"]["containers"]
    assert container["image"] == manager_container["image"]
    assert container["args"] == ["manager_bot", "gateway"]
    assert manager_container["args"] == ["manager_bot", "run"]
    assert container["ports"] == [
        {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}
    ]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_PORT"] == str(GATEWAY_PORT)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }
    annotations = installed(variant, "Deployment", GATEWAY)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(GATEWAY_PORT),
        "prometheus.io/path": "/metrics",
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gateway_has_no_kubernetes_rights_and_no_token(variant: str) -> None:
    objects = rendered(variant)
    account = installed(variant, "ServiceAccount", GATEWAY)
    assert account["automountServiceAccountToken"] is False
    pod_spec = installed(variant, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == GATEWAY
    assert pod_spec["automountServiceAccountToken"] is False
    assert not [volume for volume in pod_spec.get("volumes", []) if "projected" in volume]
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert bindings  # the manager's are there: the check below looks at real bindings
    for binding in bindings:
        for subject in binding.get("subjects", []):
            named = (subject.get("namespace"), subject["name"])
            assert named != GATEWAY_ACCOUNT, binding["metadata"]["name"]
            assert named == MANAGER_ACCOUNT, binding["metadata"]["name"]
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert GATEWAY not in {role["metadata"]["name"] for role in roles}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_gateway_gets_only_the_secrets_it_needs(variant: str) -> None:
    container = gateway_container(variant)
    # No whole-Secret envFrom: that would hand it MANAGER_BOT_TOKEN.
    assert container["envFrom"] == [{"configMapRef": {"name": "hatchbot-config"}}]
    from_secrets = {
        entry["name"]: entry["valueFrom"]["secretKeyRef"]
        for entry in container["env"]
        if "secretKeyRef" in entry.get("valueFrom", {})
    }
    keys = {ref["key"] for ref in from_secrets.values()}
    assert keys == REQUIRED_SECRET_KEYS | PROVIDER_SECRET_KEYS
    for name, ref in from_secrets.items():
        assert ref["name"] == SECRET
        assert ref["key"] == name  # each variable is the Secret's key of the same name
        assert ref.get("optional", False) is (name in PROVIDER_SECRET_KEYS), name
    names = [entry["name"] for entry in container["env"]]
    assert "MANAGER_BOT_TOKEN" not in names
    assert len(names) == len(set(names))
    # Nothing secret as a literal value, and nothing else read from any Secret.
    literal = {entry["name"] for entry in container["env"] if "value" in entry}
    assert literal == {"GATEWAY_HOST", "GATEWAY_PORT"}
    assert "MANAGER_BOT_TOKEN" not in settings_from_config_map(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_gateways_one_budget_one_service_all_selecting_the_same_pods(variant: str) -> None:
    deployment = installed(variant, "Deployment", GATEWAY)
    service = installed(variant, "Service", GATEWAY)
    budget = installed(variant, "PodDisruptionBudget", GATEWAY)
    labels = pod_labels(variant, GATEWAY)
    assert labels["app.kubernetes.io/component"] == "llm-gateway"
    assert labels["app.kubernetes.io/name"] == "hatchbot"

    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert budget["spec"]["minAvailable"] == 1
    selector = deployment["spec"]["selector"]
    assert budget["spec"]["selector"] == selector
    assert service["spec"]["selector"] == selector["matchLabels"]
    assert selects(selector, labels)
    assert not selects(selector, pod_labels(variant, "hatchbot-manager"))

    (preferred,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"] == selector

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_agents_are_given_the_gateways_service_as_their_llm_base_url(variant: str) -> None:
    settings = settings_from_config_map(variant)
    service = installed(variant, "Service", GATEWAY)
    url = urlsplit(settings["GATEWAY_URL"])
    assert url.scheme == "http"
    assert url.hostname == f"{GATEWAY}.{NAMESPACE}.svc.cluster.local"
    assert (url.port or 80) == service["spec"]["ports"][0]["port"]
    assert url.path == "/v1"
    assert settings["K8S_MANAGER_NAMESPACE"] == NAMESPACE
    for cidr in settings["K8S_CLUSTER_CIDRS"].split(","):
        ipaddress.ip_network(cidr.strip())  # a CIDR, not a typo the manager would refuse
    assert int(settings["AGENT_DAILY_TOKEN_BUDGET"]) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_agents_namespace_denies_all_traffic_by_default(variant: str) -> None:
    agents = settings_from_config_map(variant)["K8S_NAMESPACE"]
    policy = installed(variant, "NetworkPolicy", "default-deny", namespace=agents)
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # The only policy the install puts in `agents`; each agent's allow comes from the manager.
    in_agents = [
        o for o in rendered(variant)
        if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == agents
    ]  # fmt: skip
    assert in_agents == [policy]


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_agents_and_the_manager_reach_the_gateway_on_its_port(variant: str) -> None:
    policy = installed(variant, "NetworkPolicy", GATEWAY)
    deployment = installed(variant, "Deployment", GATEWAY)
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress: database and providers
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": GATEWAY_PORT}]
    assert gateway_container(variant)["ports"][0]["containerPort"] == GATEWAY_PORT

    agents = settings_from_config_map(variant)["K8S_NAMESPACE"]
    (from_agents, from_manager) = rule["from"]
    # Any pod of the agents namespace (each agent's egress policy narrows its side).
    assert from_agents == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": agents}}
    }
    # The manager's pods, in the gateway's own namespace (no namespaceSelector).
    assert set(from_manager) == {"podSelector"}
    assert selects(from_manager["podSelector"], pod_labels(variant, "hatchbot-manager"))
    assert not selects(from_manager["podSelector"], pod_labels(variant, GATEWAY))
