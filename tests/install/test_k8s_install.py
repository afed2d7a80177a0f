"""`k8s/`: what `kubectl apply -k` installs is valid, least-privilege and restricted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec, ObservedState
from manager_bot.backends.kubernetes import KubernetesBackend, required_access
from manager_bot.backends.manifests import ClusterConfig, agent_manifests
from tests.fakes.install import granted, manager_roles, rendered
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.schemas import validate

JsonDict = dict[str, Any]
VARIANTS = ("istio", "gateway-api")
# Variant -> (API group, resource) of the per-agent route.
ROUTE = {
    "istio": ("networking.istio.io", "virtualservices"),
    "gateway-api": ("gateway.networking.k8s.io", "httproutes"),
}
# Restricted Pod Security Standard: the only volume types allowed.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def spec(agent_id: str) -> AgentSpec:
    return AgentSpec(
        agent_id=agent_id,
        secrets=AgentSecrets(
            bot_token=SecretStr("7000000001:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            webhook_secret=SecretStr("hook_secret_value_123"),
            gateway_key=SecretStr("sk-agentkeyagentkeyagentkey"),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="Be brief.",
        llm_base_url="https://api.openai.com/v1",
    )


def settings_from_config_map(variant: str) -> dict[str, str]:
    (config_map,) = [o for o in rendered(variant) if o["kind"] == "ConfigMap"]
    data: dict[str, str] = config_map["data"]
    return data


def cluster_for(variant: str) -> ClusterConfig:
    """The backend configured exactly as the installed ConfigMap configures the manager."""
    data = settings_from_config_map(variant)
    return ClusterConfig(
        namespace=data["K8S_NAMESPACE"],
        image=data["AGENT_IMAGE"],
        router=data["K8S_ROUTER"],
        public_url=data["PUBLIC_URL"],
        gateway=data["K8S_GATEWAY"],
        ingress_namespace=data["K8S_INGRESS_NAMESPACE"],
        manager_namespace=data["K8S_MANAGER_NAMESPACE"],
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_installed_object_validates_against_its_schema(variant: str) -> None:
    objects = rendered(variant)
    for obj in objects:
        validate(obj)
    kinds = sorted(o["kind"] for o in objects)
    deployments = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Deployment")
    assert deployments == ["hatchbot-llm-gateway", "hatchbot-manager"] and "Gateway" in kinds
    assert settings_from_config_map(variant)["K8S_ROUTER"] == variant
    (gateway,) = [o for o in objects if o["kind"] == "Gateway"]
    data = settings_from_config_map(variant)
    assert (
        data["K8S_GATEWAY"] == f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}"
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_nothing_cluster_wide_and_the_agents_namespace_is_restricted(variant: str) -> None:
    objects = rendered(variant)
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = [o for o in objects if o["kind"] == "Role"]
    assert roles and all(r["metadata"]["namespace"] == "agents" for r in roles)
    assert manager_roles(variant) == roles  # every Role is the manager's, bound to its account
    namespaces = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Namespace"}
    data = settings_from_config_map(variant)
    for name in (data["K8S_NAMESPACE"], data["K8S_MANAGER_NAMESPACE"]):
        labels = namespaces[name]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.fixture
def enforcing(kube: FakeKubernetes, kubeconfig: Path) -> Iterator[tuple[FakeKubernetes, Any]]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    yield kube, api_client
    api_client.close()


@pytest.mark.parametrize("variant", VARIANTS)
async def test_the_role_grants_exactly_what_the_backend_uses(
    variant: str, enforcing: tuple[FakeKubernetes, Any]
) -> None:
    kube, api_client = enforcing
    roles = manager_roles(variant)
    for role in roles:
        kube.grant(role)
    kube.auto_ready = True
    backend = KubernetesBackend(api_client=api_client, cluster=cluster_for(variant))
    # Every operation the deployer can ask of the backend, including an orphan's removal.
    await backend.apply(spec("first00001"))
    await backend.apply(spec("second0001"))
    await backend.apply(spec("first00001"))  # an edit: apply over existing objects
    await backend.restart("first00001")
    await backend.stop("first00001")
    await backend.apply(spec("first00001"))  # resume
    kube.set_pod_log("agents", "agent-first00001", "started\n")
    assert "started" in await backend.logs("first00001", lines=10)
    observed = await backend.observe_all()
    assert observed["second0001"].state == ObservedState.RUNNING
    assert (await backend.observe("first00001")) is not None
    await backend.delete("second0001")
    await backend.delete("first00001")

    denied = [c for c in kube.access_checks if not c.allowed]
    assert denied == []
    used = {(c.verb, c.group, c.resource) for c in kube.access_checks}
    assert used == granted(roles) == required_access(variant)
    assert {c.namespace for c in kube.access_checks} == {"agents"}
    assert ("create", *ROUTE[variant]) in used


async def test_rbac_is_enforced_by_the_fake(enforcing: tuple[FakeKubernetes, Any]) -> None:
    """The check above could not pass by accident: a missing grant is a 403."""
    kube, api_client = enforcing
    narrowed = [
        {**role, "rules": [r for r in role["rules"] if "services" not in r["resources"]]}
        for role in manager_roles("istio")
    ]
    for role in narrowed:
        kube.grant(role)
    backend = KubernetesBackend(api_client=api_client, cluster=cluster_for("istio"))
    with pytest.raises(Exception, match="403"):
        await backend.apply(spec("third00001"))
    assert [c.resource for c in kube.access_checks if not c.allowed] == ["services"]


def violations(pod_spec: JsonDict) -> list[str]:
    """What the "restricted" Pod Security Standard (with baseline) would reject."""
    found: list[str] = []
    pod_context = pod_spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            found.append(flag)
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    for container in containers:
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot must be true")
        if 0 in (context.get("runAsUser"), pod_context.get("runAsUser")):
            found.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


def test_the_restricted_check_catches_a_root_pod() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}], "hostPID": True}
    assert len(violations(pod)) >= 5


@pytest.mark.parametrize("variant", VARIANTS)
def test_agent_and_manager_pods_meet_the_restricted_standard(variant: str) -> None:
    (manager,) = [
        o for o in rendered(variant)
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "hatchbot-manager"
    ]  # fmt: skip
    (agent,) = [
        o for o in agent_manifests(spec("first00001"), cluster_for(variant))
        if o["kind"] == "Deployment"
    ]  # fmt: skip
    for deployment in (manager, agent):
        pod_spec = deployment["spec"]["template"]["spec"]
        assert violations(pod_spec) == [], deployment["metadata"]["name"]
        (container,) = pod_spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
