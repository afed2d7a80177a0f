"""Telegram reaches an agent's pod only as the cluster's objects say: route, Service, policy."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import aiohttp
import pytest

from manager_bot.backends.manifests import ClusterConfig, agent_manifests, webhook_path
from tests.cluster.test_kubelet import create, ready_pod, spec
from tests.fakes.cluster_network import Caller, FakeClusterNetwork
from tests.fakes.install import install_gateway
from tests.fakes.kubelet import FakeKubelet
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.waiting import until
from tests.runtime.conftest import set_webhook

INGRESS = Caller("istio-system", {"istio": "ingressgateway"})
MANAGER = Caller("hatchbot-system", {"app.kubernetes.io/name": "hatchbot"})


def cluster_for(router: str) -> ClusterConfig:
    return ClusterConfig(
        namespace="agents", image="hatchbot:test", router=router,
        public_url="https://bots.example.com",
    )  # fmt: skip


@pytest.fixture(params=["istio", "gateway-api"])
async def world(
    request: pytest.FixtureRequest, kube: FakeKubernetes, telegram: FakeTelegram,
) -> AsyncIterator[tuple[str, FakeClusterNetwork, FakeKubelet]]:  # fmt: skip
    router: str = request.param
    install_gateway(kube, router)
    async with (
        FakeKubelet(kube) as kubelet,
        FakeClusterNetwork(kube, router=router, ingress=INGRESS, manager=MANAGER) as network,
    ):
        telegram.hosts["bots.example.com"] = network.ingress_url
        yield router, network, kubelet


async def test_a_message_reaches_the_agent_through_the_ingress_and_the_answer_comes_back(
    world: tuple[str, FakeClusterNetwork, FakeKubelet], kube: FakeKubernetes,
    telegram: FakeTelegram, openai_server: FakeOpenAI,
) -> None:  # fmt: skip
    router, network, _ = world
    cluster = cluster_for(router)
    agent = spec(telegram, openai_server)
    create(kube, agent_manifests(agent, cluster))
    await until(lambda: ready_pod(kube))
    bot = telegram.bot("pod_bot")
    await set_webhook(
        telegram, bot, f"https://bots.example.com{webhook_path(agent, cluster)}",
        agent.secrets.webhook_secret.get_secret_value(),  # type: ignore[union-attr]
    )  # fmt: skip
    user = telegram.user(bot)
    await user.send("hello cluster")
    await user.wait_for(text_contains="echo: hello cluster", timeout=20)
    assert [d.status for d in network.deliveries if d.via == "ingress"] == [200]


async def test_no_route_is_404_no_ready_pod_is_503_and_a_policy_that_refuses_the_ingress_drops_it(
    world: tuple[str, FakeClusterNetwork, FakeKubelet], kube: FakeKubernetes,
    telegram: FakeTelegram, openai_server: FakeOpenAI,
) -> None:  # fmt: skip
    router, network, kubelet = world
    cluster = cluster_for(router)
    agent = spec(telegram, openai_server)
    manifests = agent_manifests(agent, cluster)
    policy = next(m for m in manifests if m["kind"] == "NetworkPolicy")
    closed = copy.deepcopy(policy)
    closed["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0][
        "values"
    ] = ["hatchbot-system"]  # the manager may probe; the ingress may not deliver
    create(kube, [closed if m is policy else m for m in manifests if m["kind"] != "Deployment"])
    bot = telegram.bot("pod_bot")
    url = f"https://bots.example.com{webhook_path(agent, cluster)}"
    secret = agent.secrets.webhook_secret.get_secret_value()  # type: ignore[union-attr]
    await set_webhook(telegram, bot, url, secret)
    user = telegram.user(bot)
    await user.send("anyone there?")
    await until(lambda: network.deliveries)
    assert network.deliveries[0].status == 503  # routed, but no pod behind the Service
    create(kube, [m for m in manifests if m["kind"] == "Deployment"])
    await until(lambda: ready_pod(kube))
    network.deliveries.clear()
    await until(lambda: network.deliveries)
    assert {d.status for d in network.deliveries} == {503}
    assert "NetworkPolicy" in network.deliveries[0].reason
    info = bot.webhook
    assert info is not None and "503" in (info.last_error_message or "")
    # The manager's probes are admitted by the same policy.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{network.service_url}/agent-kubelet01/readyz") as answer,
    ):
        assert answer.status == 200
    # Another path under the public host has no route.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{network.ingress_url}/webhook/someone-else", headers={"Host": "bots.example.com"}
        ) as answer,
    ):
        assert answer.status == 404
    assert kubelet.processes()
