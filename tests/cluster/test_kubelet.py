"""The fake kubelet runs what a Deployment says: real runtime processes, probes, restarts."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kubernetes import client
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.manifests import ClusterConfig, agent_manifests
from tests.fakes.kubelet import FakeKubelet
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import until

CLUSTER = ClusterConfig(
    namespace="agents", image="hatchbot:test", router="istio", public_url="https://x.example"
)
NAME = "agent-kubelet01"


@pytest.fixture
async def kubelet(kube: FakeKubernetes) -> AsyncIterator[FakeKubelet]:
    async with FakeKubelet(kube) as running:
        yield running


def spec(telegram: FakeTelegram, openai_server: FakeOpenAI, **changes: Any) -> AgentSpec:
    bot = telegram.add_bot(username="pod_bot")
    fields: dict[str, Any] = {
        "agent_id": "kubelet01",
        "secrets": AgentSecrets(
            bot_token=SecretStr(bot.token),
            webhook_secret=SecretStr("hook-secret-hook-secret-0123456789"),
            gateway_key=SecretStr("hbgw_podkeypodkeypodkey"),
        ),
        "llm_model": "gpt-4o-mini",
        "system_prompt": "You are a pod.",
        "llm_base_url": openai_server.url,
        "telegram_api_url": telegram.url,
    }
    return AgentSpec(**(fields | changes))


def create(kube: FakeKubernetes, manifests: list[dict[str, Any]]) -> None:
    plural = {"NetworkPolicy": "networkpolicies", "Secret": "secrets", "Deployment": "deployments",
              "Service": "services", "VirtualService": "virtualservices",
              "HTTPRoute": "httproutes"}  # fmt: skip
    for manifest in manifests:
        body = copy.deepcopy(manifest)
        body["metadata"]["namespace"] = "agents"
        kube.put_object(plural[manifest["kind"]], body)


def pods(kube: FakeKubernetes) -> list[dict[str, Any]]:
    return kube.objects("pods", "agents")


def ready_pod(kube: FakeKubernetes) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in pods(kube)
            if {"type": "Ready", "status": "True"} in p.get("status", {}).get("conditions", [])
        ),
        None,
    )


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]


def waiting(kube: FakeKubernetes, reason: str) -> dict[str, Any] | None:
    return next(
        (p for p in pods(kube) if container_state(p).get("state", {}).get("waiting", {}).get(
            "reason") == reason),
        None,
    )  # fmt: skip


def deployment_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == "Deployment")


async def get(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        return answer.status


async def test_a_deployment_becomes_a_ready_runtime_on_its_pod_ip_with_its_log(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram,
    openai_server: FakeOpenAI, kube_api_client: Any,
) -> None:  # fmt: skip
    create(kube, agent_manifests(spec(telegram, openai_server), CLUSTER))
    pod = await until(lambda: ready_pod(kube))
    assert await get(f"http://{pod['status']['podIP']}:8080/healthz") == 200
    deployment = kube.get_object("deployments", "agents", NAME)
    assert deployment is not None
    assert deployment["status"]["readyReplicas"] == 1
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
    log = await asyncio.to_thread(
        client.CoreV1Api(kube_api_client).read_namespaced_pod_log,
        pod["metadata"]["name"], "agents", tail_lines=5,
    )  # fmt: skip
    assert "ready as @pod_bot" in log
    # The runtime ran from the image's read-only copy of the code, as the image's user.
    assert container_state(pod)["restartCount"] == 0


async def test_a_template_change_recreates_the_pod_and_scale_to_zero_ends_it(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    manifests = agent_manifests(spec(telegram, openai_server), CLUSTER)
    create(kube, manifests)
    first = await until(lambda: ready_pod(kube))
    old_process = kubelet.processes("agents")[0]
    changed = copy.deepcopy(deployment_of(manifests))
    changed["metadata"]["namespace"] = "agents"
    changed["spec"]["template"]["metadata"]["annotations"]["edited"] = "yes"
    kube.replace_object("deployments", changed)
    second = await until(
        lambda: (p := ready_pod(kube)) and p["metadata"]["name"] != first["metadata"]["name"] and p
    )
    # Recreate: the old container had ended before the new one started.
    assert old_process.returncode is not None
    assert [p["metadata"]["name"] for p in pods(kube)] == [second["metadata"]["name"]]
    scaled = copy.deepcopy(changed)
    scaled["spec"]["replicas"] = 0
    kube.replace_object("deployments", scaled)
    await until(lambda: not pods(kube) and not kubelet.processes())
    assert await until(
        lambda: (
            (d := kube.get_object("deployments", "agents", NAME))
            and d["status"].get("replicas") == 0
            and d
        )
    )


async def test_a_rolling_update_keeps_one_ready_pod_throughout(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    manifests = agent_manifests(spec(telegram, openai_server), CLUSTER)
    deployment = deployment_of(manifests)
    deployment["spec"]["strategy"] = {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
    create(kube, manifests)
    first = await until(lambda: ready_pod(kube))
    changed = copy.deepcopy(deployment)
    changed["metadata"]["namespace"] = "agents"
    changed["spec"]["template"]["metadata"]["annotations"]["edited"] = "yes"
    kube.replace_object("deployments", changed)
    seen_unready = False
    while True:
        current = pods(kube)
        names = {p["metadata"]["name"] for p in current}
        seen_unready |= ready_pod(kube) is None
        if first["metadata"]["name"] not in names and len(current) == 1 and ready_pod(kube):
            break
        await asyncio.sleep(0.02)
    assert not seen_unready


async def test_an_exiting_container_crash_loops_with_its_last_termination(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    manifests = agent_manifests(spec(telegram, openai_server), CLUSTER)
    container = deployment_of(manifests)["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "WEBHOOK_SECRET"]
    create(kube, manifests)  # MODE=webhook without WEBHOOK_SECRET: the runtime exits 2
    pod = await until(
        lambda: (p := waiting(kube, "CrashLoopBackOff")) and container_state(p)["restartCount"] >= 2
        and p
    )  # fmt: skip
    terminated = container_state(pod)["lastState"]["terminated"]
    assert terminated["reason"] == "Error" and terminated["exitCode"] != 0
    assert ready_pod(kube) is None


async def test_a_missing_secret_an_unpullable_image_and_an_oom_kill_show_as_the_kubelet_says(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    manifests = agent_manifests(spec(telegram, openai_server), CLUSTER)
    create(kube, [m for m in manifests if m["kind"] != "Secret"])
    await until(lambda: waiting(kube, "ContainerCreating"))  # the prompt volume cannot mount
    assert not kubelet.processes()
    create(kube, [m for m in manifests if m["kind"] == "Secret"])
    await until(lambda: ready_pod(kube))
    assert kubelet.oom_kill("agents", NAME) == 1
    pod = await until(
        lambda: (p := ready_pod(kube)) and container_state(p)["restartCount"] == 1 and p
    )
    assert container_state(pod)["lastState"]["terminated"]["reason"] == "OOMKilled"
    kubelet.unpullable.add("hatchbot:broken")
    broken = copy.deepcopy(deployment_of(manifests))
    broken["metadata"]["namespace"] = "agents"
    broken["spec"]["template"]["spec"]["containers"][0]["image"] = "hatchbot:broken"
    kube.replace_object("deployments", broken)
    await until(lambda: waiting(kube, "ImagePullBackOff"))


async def test_probes_follow_their_specs(
    kube: FakeKubernetes, kubelet: FakeKubelet, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    manifests = agent_manifests(spec(telegram, openai_server), CLUSTER)
    container = deployment_of(manifests)["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/nowhere"  # never ready
    container["livenessProbe"] = {
        "httpGet": {"path": "/nowhere", "port": "http"}, "periodSeconds": 1,
        "failureThreshold": 2, "initialDelaySeconds": 1,
    }  # fmt: skip
    create(kube, manifests)
    await until(lambda: kubelet.started >= 2)  # the failed liveness probe restarted it
    (pod,) = pods(kube)
    assert container_state(pod)["restartCount"] >= 1
    assert ready_pod(kube) is None
