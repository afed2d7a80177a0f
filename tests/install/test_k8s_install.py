"""`k8s/`: what `kubectl apply -k` installs is valid, least-privilege and restricted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes import client, config
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec, BackendError, ObservedState
from manager_bot.backends.kubernetes import KubernetesBackend, required_access
from manager_bot.backends.manifests import ClusterConfig, agent_manifests
from manager_bot.leader import LEASE_ACCESS, LEASE_NAME, KubeLeases, LeaderElector, LeaseTiming
from tests.fakes.cluster_network import Caller, FakeClusterNetwork
from tests.fakes.ingress_routes import Backend, NoRoute, Request, route_gateway_api, route_istio
from tests.fakes.install import granted, manager_roles, rendered
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import serve_on_loopback
from tests.fakes.schemas import validate
from tests.fakes.waiting import until

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
    data = settings_from_config_map(variant)
    # The agents' objects in theirs; in its own namespace only its leader election Lease.
    assert roles and {r["metadata"]["namespace"] for r in agent_roles(variant)} == {"agents"}
    (leader,) = [r for r in roles if r["metadata"]["namespace"] == data["K8S_MANAGER_NAMESPACE"]]
    assert {rule_group for rule in leader["rules"] for rule_group in rule["resources"]} == {
        "leases"
    }
    assert manager_roles(variant) == roles  # every Role is the manager's, bound to its account
    namespaces = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Namespace"}
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
    roles = agent_roles(variant)
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


def agent_roles(variant: str) -> list[JsonDict]:
    return [r for r in manager_roles(variant) if r["metadata"]["namespace"] == "agents"]


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


# -- high availability: two replicas, their route, their Lease ---------------------------

MANAGER_LABELS = {"app.kubernetes.io/name": "hatchbot", "app.kubernetes.io/component": "manager"}
WEBHOOK_PORT = 8081  # the contract with webhook mode: container port `webhook`


def manager_object(variant: str, kind: str) -> JsonDict:
    (found,) = [
        o for o in rendered(variant)
        if o["kind"] == kind and o["metadata"]["name"] == "hatchbot-manager"
    ]  # fmt: skip
    return found


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_manager_runs_two_replicas_that_roll_and_survive_a_drain(variant: str) -> None:
    deployment = manager_object(variant, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"} in container[
        "ports"
    ]
    # Ready only when start-up has reached the database (the status server's /readyz).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # No volume two replicas would have to share.
    assert not [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    budget = manager_object(variant, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector == MANAGER_LABELS
    service = manager_object(variant, "Service")
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "webhook"]
    assert (port["port"], port["targetPort"]) == (WEBHOOK_PORT, "webhook")
    data = settings_from_config_map(variant)
    assert data["MANAGER_WEBHOOK"] == "true"
    # Listening where the Service sends: all addresses, the `webhook` port.
    assert (data["MANAGER_WEBHOOK_HOST"], data["MANAGER_WEBHOOK_PORT"]) == ("0.0.0.0", "8081")
    (config_map,) = [o for o in rendered(variant) if o["kind"] == "ConfigMap"]
    assert "MANAGER_WEBHOOK_SECRET" not in config_map["data"]  # a secret: hatchbot-secrets


def _deliver(variant: str, path: str) -> Backend | NoRoute:
    """A request through the install's routes and one agent's, as the ingress sees them."""
    objects = rendered(variant)
    agent_route = [
        o for o in agent_manifests(spec("first00001"), cluster_for(variant))
        if o["kind"] in ("VirtualService", "HTTPRoute")
    ]  # fmt: skip
    host = settings_from_config_map(variant)["PUBLIC_URL"].removeprefix("https://")
    request = Request(host=host, path=path)
    if variant == "istio":
        return route_istio(
            request,
            virtual_services=[o for o in objects if o["kind"] == "VirtualService"] + agent_route,
            gateways=[o for o in objects if o["kind"] == "Gateway"],
        )
    return route_gateway_api(
        request,
        http_routes=[o for o in objects if o["kind"] == "HTTPRoute"] + agent_route,
        gateways=[o for o in objects if o["kind"] == "Gateway"],
        namespace_labels={
            o["metadata"]["name"]: o["metadata"].get("labels", {})
            for o in objects
            if o["kind"] == "Namespace"
        },
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_ingress_sends_telegram_posts_to_the_manager_and_webhooks_to_agents(
    variant: str,
) -> None:
    secret_path = "0123456789abcdef0123456789abcdef"
    manager = _deliver(variant, f"/telegram/{secret_path}")
    assert manager == Backend("hatchbot-system", "hatchbot-manager", WEBHOOK_PORT,
                              f"/telegram/{secret_path}")  # fmt: skip
    agent = _deliver(variant, "/webhook/first00001")
    assert isinstance(agent, Backend) and agent.service == "agent-first00001"
    assert agent.namespace == "agents"
    # The manager's route is its prefix only: nothing else reaches its port.
    assert not isinstance(_deliver(variant, "/telegramX"), Backend)
    assert not isinstance(_deliver(variant, "/metrics"), Backend)


async def test_the_lease_role_grants_exactly_what_leader_election_uses(
    enforcing: tuple[FakeKubernetes, Any],
) -> None:
    kube, api_client = enforcing
    data = settings_from_config_map("istio")
    namespace = data["K8S_MANAGER_NAMESPACE"]
    kube.put_object("namespaces", {"metadata": {"name": namespace}})
    leader_roles = [r for r in manager_roles("istio") if r["metadata"]["namespace"] == namespace]
    for role in leader_roles:
        kube.grant(role)
    backend = KubernetesBackend(api_client=api_client, cluster=cluster_for("istio"))
    leases = KubeLeases(backend, namespace=namespace)
    timing = LeaseTiming(duration=3.0, renew_deadline=2.0, retry_period=0.2)
    elector = LeaderElector(leases=leases, timing=timing)
    led = asyncio.Event()

    async def lead() -> None:
        led.set()
        await asyncio.Event().wait()

    running = asyncio.create_task(elector.run(lead))
    await asyncio.wait_for(led.wait(), 10)
    await until(lambda: sum(c.verb == "update" for c in kube.access_checks) >= 2)  # renewed
    running.cancel()  # SIGTERM: the Lease is handed back
    await asyncio.gather(running, return_exceptions=True)
    leases.close()

    lease = kube.get_object("leases", namespace, LEASE_NAME)
    assert lease is not None and lease["spec"]["holderIdentity"] == ""
    assert [c for c in kube.access_checks if not c.allowed] == []
    used = {(c.verb, c.group, c.resource) for c in kube.access_checks}
    assert used == granted(leader_roles) == LEASE_ACCESS
    # Named: another Lease in the namespace is not the manager's to read or write.
    other = KubeLeases(backend, namespace=namespace, name="somebody-elses")
    kube.put_object("leases", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": "somebody-elses", "namespace": namespace}})  # fmt: skip
    with pytest.raises(BackendError, match="403"):
        await other.get()
    other.close()
    await backend.close()


@pytest.mark.parametrize("variant", VARIANTS)
async def test_telegram_posts_reach_a_manager_pod_through_the_fake_ingress(
    variant: str, kube: FakeKubernetes
) -> None:
    """The installed route, Service and policies, followed by the fake data plane with real
    HTTP: a POST to PUBLIC_URL/telegram/<path> arrives at a manager pod's `webhook` port."""
    received: list[tuple[str, str | None]] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append((request.path, request.headers.get("X-Telegram-Bot-Api-Secret-Token")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/telegram/{path}", webhook)
    runner, url = await serve_on_loopback(app)
    plurals = {
        "Namespace": "namespaces", "Gateway": "gateways", "VirtualService": "virtualservices",
        "HTTPRoute": "httproutes", "NetworkPolicy": "networkpolicies", "Service": "services",
    }  # fmt: skip
    for obj in rendered(variant):
        name = obj["metadata"]["name"]
        if obj["kind"] not in plurals or (
            obj["kind"] == "Namespace" and kube.get_object("namespaces", None, name)
        ):
            continue
        kube.put_object(plurals[obj["kind"]], obj)
    kube.put_object("pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hatchbot-manager-1", "namespace": "hatchbot-system",
                     "labels": MANAGER_LABELS},
        "spec": {"containers": [{"name": "manager", "image": "hatchbot:test", "ports": [
            {"name": "webhook", "containerPort": int(url.rsplit(":", 1)[1])}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    host = settings_from_config_map(variant)["PUBLIC_URL"].removeprefix("https://")
    ingress = Caller(settings_from_config_map(variant)["K8S_INGRESS_NAMESPACE"], {"app": "gw"})
    path = "/telegram/0123456789abcdef0123456789abcdef"
    try:
        async with (
            FakeClusterNetwork(kube, router=variant, ingress=ingress,
                               manager=Caller("hatchbot-system", MANAGER_LABELS)) as network,
            aiohttp.ClientSession() as http,
        ):  # fmt: skip
            headers = {"Host": host, "X-Telegram-Bot-Api-Secret-Token": "s3cret"}
            async with http.post(network.ingress_url + path, json={}, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
            # Not the manager's: an agent's path (no such agent here) is not sent to it.
            async with http.post(network.ingress_url + "/webhook/first00001",
                                 json={}, headers=headers) as answer:  # fmt: skip
                assert answer.status == 404
    finally:
        await runner.cleanup()
    assert received == [(path, "s3cret")]
