"""KubernetesBackend against the fake API server through the real client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client, config
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec, BackendError, ObservedState
from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.manifests import ClusterConfig, agent_manifests
from tests.fakes.kubelet_env import secret_strings
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.schemas import validate

TOKEN = "7000000001:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
LLM_KEY = "sk-agentkeyagentkeyagentkey"
HOOK = "hook_secret_value_123"
SELECTOR = "app.kubernetes.io/managed-by=hatchbot"
KINDS = ("secrets", "deployments", "services", "networkpolicies", "virtualservices")


def spec(agent_id: str = "a1b2c3d4e5", **changes: object) -> AgentSpec:
    base = AgentSpec(
        agent_id=agent_id,
        secrets=AgentSecrets(
            bot_token=SecretStr(TOKEN),
            webhook_secret=SecretStr(HOOK),
            gateway_key=SecretStr(LLM_KEY),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="Be brief.",
        llm_base_url="https://api.openai.com/v1",
    )
    return AgentSpec(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def cluster(router: str = "istio") -> ClusterConfig:
    return ClusterConfig(
        namespace="agents",
        image="hatchbot:test",
        router=router,
        public_url="https://bots.example.com/tg",
    )


@pytest.fixture
async def backend(kube: FakeKubernetes, kubeconfig: Path) -> AsyncIterator[KubernetesBackend]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    backend = KubernetesBackend(api_client=client.ApiClient(configuration), cluster=cluster())
    yield backend
    await backend.close()


def labelled(kube: FakeKubernetes, agent_id: str | None = None) -> dict[str, list[str]]:
    selector = SELECTOR + (f",hatchbot.io/agent-id={agent_id}" if agent_id else "")
    return {
        kind: [o["metadata"]["name"] for o in kube.objects(kind, "agents", selector)]
        for kind in KINDS
    }


@pytest.mark.parametrize("router", ["istio", "gateway-api", "none"])
def test_manifests_validate_and_keep_secrets_in_the_secret(router: str) -> None:
    objects = agent_manifests(spec(), cluster(router))
    for obj in objects:
        validate(obj)
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "hatchbot",
            "hatchbot.io/agent-id": "a1b2c3d4e5",
        }
        assert obj["metadata"]["name"] == "agent-a1b2c3d4e5"
    kinds = [o["kind"] for o in objects]
    expected_route = {"istio": ["VirtualService"], "gateway-api": ["HTTPRoute"], "none": []}[router]
    # The policy first: no pod of the agent ever runs unguarded.
    assert kinds == ["NetworkPolicy", "Secret", "Deployment", "Service", *expected_route]
    deployment = objects[2]
    rendered = str(deployment)
    for secret in (TOKEN, LLM_KEY, HOOK):
        assert secret not in rendered
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "envFrom" not in container  # each secret by name: nothing else rides along
    references = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert references == {
        key: {"name": "agent-a1b2c3d4e5", "key": key}
        for key in ("BOT_TOKEN", "WEBHOOK_SECRET", "LLM_API_KEY")
    }
    # The "restricted" Pod Security Standard.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"] and container["resources"]["requests"]
    assert {
        container["livenessProbe"]["httpGet"]["path"],
        container["readinessProbe"]["httpGet"]["path"],
    } == {
        "/healthz",
        "/readyz",
    }


def test_route_sends_the_public_webhook_path_to_the_service() -> None:
    virtual_service = agent_manifests(spec(), cluster("istio"))[-1]
    http = virtual_service["spec"]["http"][0]
    assert virtual_service["spec"]["hosts"] == ["bots.example.com"]
    assert virtual_service["spec"]["gateways"] == ["hatchbot-system/hatchbot-gateway"]
    assert http["match"][0]["uri"] == {"exact": "/tg/webhook/a1b2c3d4e5"}
    assert http["route"][0]["destination"]["host"] == "agent-a1b2c3d4e5.agents.svc.cluster.local"
    route = agent_manifests(spec(), cluster("gateway-api"))[-1]
    assert route["spec"]["rules"][0]["matches"][0]["path"] == {
        "type": "Exact",
        "value": "/tg/webhook/a1b2c3d4e5",
    }
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "agent-a1b2c3d4e5", "port": 80}]


async def test_deploy_creates_the_labelled_objects_and_reapply_is_a_noop(
    kube: FakeKubernetes, backend: KubernetesBackend
) -> None:
    kube.clear_requests()
    await backend.apply(spec())
    assert len(kube.requests) <= 6
    assert all(r.is_apply for r in kube.requests)
    assert labelled(kube) == {kind: ["agent-a1b2c3d4e5"] for kind in KINDS}
    before = {
        kind: kube.get_object(kind, "agents", "agent-a1b2c3d4e5")["metadata"]["resourceVersion"]
        for kind in KINDS
    }
    await backend.apply(spec())
    after = {
        kind: kube.get_object(kind, "agents", "agent-a1b2c3d4e5")["metadata"]["resourceVersion"]
        for kind in KINDS
    }
    assert after == before


async def test_edit_is_a_rolling_update(kube: FakeKubernetes, backend: KubernetesBackend) -> None:
    await backend.apply(spec())
    first = kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")
    await backend.apply(spec(system_prompt="Be verbose.", revision=2))
    second = kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")
    assert second["metadata"]["generation"] == first["metadata"]["generation"] + 1
    assert second["metadata"]["annotations"]["hatchbot.io/revision"] == "2"
    stored = kube.get_object("secrets", "agents", "agent-a1b2c3d4e5")
    assert secret_strings(stored)["system-prompt"] == "Be verbose."
    rotated = AgentSecrets(bot_token=SecretStr(TOKEN[:-1] + "B"), webhook_secret=SecretStr(HOOK))
    await backend.apply(spec(secrets=rotated, revision=2))
    third = kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")
    assert (
        third["metadata"]["generation"] == second["metadata"]["generation"] + 1
    )  # token rotation rolls


async def test_restart_stop_resume(kube: FakeKubernetes, backend: KubernetesBackend) -> None:
    await backend.apply(spec())
    await backend.restart("a1b2c3d4e5")
    template = kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")["spec"]["template"]
    assert "kubectl.kubernetes.io/restartedAt" in template["metadata"]["annotations"]
    await backend.stop("a1b2c3d4e5")
    assert kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")["spec"]["replicas"] == 0
    assert (await backend.observe_all())["a1b2c3d4e5"].state is ObservedState.STOPPED
    await backend.apply(spec(running=False))  # reconcile of a stopped agent keeps it stopped
    assert kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")["spec"]["replicas"] == 0
    await backend.apply(spec(running=True))
    assert kube.get_object("deployments", "agents", "agent-a1b2c3d4e5")["spec"]["replicas"] == 1


async def test_delete_leaves_nothing_labelled(
    kube: FakeKubernetes, backend: KubernetesBackend
) -> None:
    await backend.apply(spec("agentone01"))
    await backend.apply(spec("agenttwo02"))
    await backend.delete("agentone01")
    assert labelled(kube, "agentone01") == {kind: [] for kind in KINDS}
    assert labelled(kube, "agenttwo02")["deployments"] == ["agent-agenttwo02"]
    await backend.delete("agentone01")  # idempotent


async def test_logs_tail_the_newest_pod(kube: FakeKubernetes, backend: KubernetesBackend) -> None:
    assert await backend.logs("a1b2c3d4e5") == ""
    await backend.apply(spec())
    kube.mark_image_pull_error("agents", "agent-a1b2c3d4e5")
    assert await backend.logs("a1b2c3d4e5") == ""  # waiting to start: the API answers 400
    kube.mark_ready("agents", "agent-a1b2c3d4e5")
    kube.set_pod_log("agents", "agent-a1b2c3d4e5", "\n".join(f"line {i}" for i in range(50)))
    assert (await backend.logs("a1b2c3d4e5", 3)).splitlines() == ["line 47", "line 48", "line 49"]


async def test_observe_all_maps_states_at_a_constant_cost(
    kube: FakeKubernetes, backend: KubernetesBackend
) -> None:
    ids = [f"agent{n:05d}" for n in range(6)]
    for agent_id in ids:
        await backend.apply(spec(agent_id))
    kube.mark_ready("agents", "agent-agent00000")
    kube.mark_crash_looping("agents", "agent-agent00001", restarts=5)
    kube.mark_oom_killed("agents", "agent-agent00002", restarts=5)
    kube.mark_image_pull_error("agents", "agent-agent00003")
    await backend.stop("agent00004")
    kube.delete_object("deployments", "agents", "agent-agent00005")
    kube.clear_requests()
    observed = await backend.observe_all()
    calls_for_six = len(kube.requests)
    assert observed["agent00000"].state is ObservedState.RUNNING
    assert observed["agent00000"].probe_url == "http://agent-agent00000.agents.svc.cluster.local:80"
    assert observed["agent00001"].state is ObservedState.CRASH_LOOPING
    assert observed["agent00001"].reason == "CrashLoopBackOff (restarted 5 times)"
    assert observed["agent00002"].reason == "OOMKilled (restarted 5 times)"
    assert observed["agent00003"].reason == "ImagePullBackOff"
    assert observed["agent00004"].state is ObservedState.STOPPED
    assert observed["agent00005"].state is ObservedState.MISSING
    for agent_id in (f"more{n:05d}" for n in range(20)):
        await backend.apply(spec(agent_id))
    kube.clear_requests()
    assert len(await backend.observe_all()) == 26
    assert len(kube.requests) == calls_for_six == 3


async def test_observing_one_agent_lists_its_secrets_only_when_its_deployment_is_gone(
    kube: FakeKubernetes, backend: KubernetesBackend
) -> None:
    for agent_id in ("agent00000", "agent00001"):
        await backend.apply(spec(agent_id))
    kube.mark_ready("agents", "agent-agent00000")
    kube.delete_object("deployments", "agents", "agent-agent00001")
    kube.clear_requests()
    running = await backend.observe("agent00000")
    assert running is not None and running.state is ObservedState.RUNNING
    assert sorted(r.resource for r in kube.requests) == ["deployments", "pods"]
    kube.clear_requests()
    missing = await backend.observe("agent00001")
    assert missing is not None and missing.state is ObservedState.MISSING
    assert sorted(r.resource for r in kube.requests) == ["deployments", "pods", "secrets"]
    assert await backend.observe("never00000") is None


@pytest.mark.parametrize("status", [500, 409])
async def test_a_cluster_error_mid_apply_is_retryable_and_reapply_completes(
    kube: FakeKubernetes, backend: KubernetesBackend, status: int
) -> None:
    kube.inject_fault(status=status, verb="patch", resource="services")
    with pytest.raises(BackendError) as caught:
        await backend.apply(spec())
    assert caught.value.retryable
    for secret in (TOKEN, LLM_KEY, HOOK):
        assert secret not in str(caught.value)
    await backend.apply(spec())
    assert labelled(kube) == {kind: ["agent-a1b2c3d4e5"] for kind in KINDS}


async def test_a_timeout_is_a_retryable_error(kube: FakeKubernetes, kubeconfig: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    impatient = KubernetesBackend(
        api_client=client.ApiClient(configuration), cluster=cluster(), request_timeout=(1, 0.3)
    )
    kube.inject_fault(status=None, delay=2, verb="patch", resource="deployments", times=5)
    with pytest.raises(BackendError) as caught:
        await impatient.apply(spec())
    await impatient.close()
    assert caught.value.retryable and "cannot reach" in str(caught.value)
