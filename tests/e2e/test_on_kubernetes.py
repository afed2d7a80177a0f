"""Chat to reply on Kubernetes, for both routers: the fake cluster runs what the manifests say.

The manager applies the agent's objects to the fake API server; the fake kubelet starts
the runtime from the Deployment (env, mounted prompt, probes); the fake Telegram sends
the webhook to PUBLIC_URL, where the fake ingress routes it by the VirtualService or
HTTPRoute and its Gateway, through the Service and the NetworkPolicy, to the pod; the
agent answers through the LLM gateway. Nothing here is marked ready by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.manifests import ClusterConfig
from manager_bot.db.session import Database
from manager_bot.gateway.process import build_gateway
from manager_bot.services.health import HealthConfig
from tests.e2e.conftest import PUBLIC_URL, Manager, paste_token, start_manager
from tests.fakes.cluster_network import Caller, FakeClusterNetwork
from tests.fakes.install import install_gateway, manager_roles
from tests.fakes.kubelet import FakeKubelet
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import until

# Where each router's ingress pods run (K8S_INGRESS_NAMESPACE), and the manager's.
INGRESS_NAMESPACE = {"istio": "istio-system", "gateway-api": "gateway-system"}
MANAGER = Caller("hatchbot-system", {"app.kubernetes.io/name": "hatchbot"})
HOSTILE_PROMPT = "Quote $(LLM_API_KEY) and $(BOT_TOKEN) literally, $$(HOME), ${PATH}, 5$ — ок."


@dataclass
class Cluster:
    router: str
    manager: Manager
    kube: FakeKubernetes
    kubelet: FakeKubelet
    network: FakeClusterNetwork


@contextlib.asynccontextmanager
async def running_cluster(
    router: str, *, telegram: FakeTelegram, openai_server: FakeOpenAI, database_url: str,
    scratch: Path,
) -> AsyncIterator[Cluster]:  # fmt: skip
    """The manager on a fake cluster that runs its agents, with the LLM gateway beside it.

    The cluster is installed as k8s/ says for this router: its Gateway, and the manager
    holding exactly the Roles of that install variant."""
    ingress = Caller(INGRESS_NAMESPACE[router], {"app": "ingress-gateway"})
    gateway_port = free_port()
    async with (
        FakeKubernetes() as kube,
        FakeKubelet(kube) as kubelet,
        FakeClusterNetwork(kube, router=router, ingress=ingress, manager=MANAGER) as network,
    ):
        for namespace in ("agents", "hatchbot-system", ingress.namespace):
            kube.put_object("namespaces", {"metadata": {"name": namespace}})
        install_gateway(kube, router)
        for role in manager_roles(router):
            kube.grant(role)
        configuration = client.Configuration()
        config.load_kube_config(
            config_file=str(kube.write_kubeconfig(scratch / "kubeconfig")),
            client_configuration=configuration,
        )
        telegram.hosts["bots.example.com"] = network.ingress_url
        backend = KubernetesBackend(
            api_client=client.ApiClient(configuration),
            cluster=ClusterConfig(
                namespace="agents", image="hatchbot:e2e", router=router, public_url=PUBLIC_URL,
                ingress_namespace=ingress.namespace, probe_base=network.service_url,
            ),
        )  # fmt: skip
        env = {
            "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
            "K8S_ROUTER": router,
            "K8S_INGRESS_NAMESPACE": ingress.namespace,
            # The gateway's Service, as the agents' pods reach it.
            "GATEWAY_URL": f"http://127.0.0.1:{gateway_port}/v1",
        }
        health = HealthConfig(webhook_mode=True, expected_webhook=f"{PUBLIC_URL}/webhook/")
        try:
            async for manager in start_manager(
                telegram=telegram, openai_server=openai_server, backend=backend,
                url=database_url, env=env, health=health,
            ):  # fmt: skip
                # The gateway is its own process on Kubernetes (python -m manager_bot gateway):
                # its own database connection, the same key.
                database = Database(database_url)
                gateway = build_gateway(
                    settings=manager.parts.settings, database=database, vault=manager.vault
                )
                await gateway.start("127.0.0.1", gateway_port)
                try:
                    yield Cluster(router, manager, kube, kubelet, network)
                finally:
                    await gateway.stop()
                    await database.close()
        finally:
            await backend.close()


@pytest.fixture(params=["istio", "gateway-api"])
async def cluster(
    request: pytest.FixtureRequest, telegram: FakeTelegram, openai_server: FakeOpenAI,
    sqlite_url: str, tmp_path: Path,
) -> AsyncIterator[Cluster]:  # fmt: skip
    async with running_cluster(
        request.param, telegram=telegram, openai_server=openai_server,
        database_url=sqlite_url, scratch=tmp_path,
    ) as running:  # fmt: skip
        yield running


def system_prompt(openai_server: FakeOpenAI) -> str:
    content: str = openai_server.chat_requests()[-1]["messages"][0]["content"]
    return content


def said_before(openai_server: FakeOpenAI) -> list[str]:
    """The conversation the model got last, after the system prompt."""
    return [str(m["content"]) for m in openai_server.chat_requests()[-1]["messages"][1:]]


async def open_card(user: SimUser, username: str) -> None:
    await user.send("/agents")
    await user.wait_for(text_contains="Your agents")
    await user.press(username)
    await user.wait_for(text_contains="State: running")


async def test_paste_deploy_chat_edit_rolls_out_and_stop_leaves_no_pod(
    cluster: Cluster, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(cluster.manager.fake)
    await paste_token(user, telegram, "cluster_helper_bot")
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send(HOSTILE_PROMPT)
    await user.wait_for(text_contains="Ready to deploy")
    await user.press("Deploy")
    await user.wait_for(text_contains="@cluster_helper_bot is live", timeout=60)
    (pod,) = cluster.kube.objects("pods", "agents")
    assert pod["status"]["containerStatuses"][0]["ready"]
    assert len(cluster.kubelet.processes("agents")) == 1

    friend = telegram.user(telegram.bot("cluster_helper_bot"), first_name="Friend")
    await friend.send("hi there")
    await friend.wait_for(text_contains="echo: hi there", timeout=30)
    # The prompt reached the model as written: no kubelet expansion into a secret.
    assert system_prompt(openai_server) == HOSTILE_PROMPT
    webhooks = [d for d in cluster.network.deliveries if d.via == "ingress"]
    assert webhooks and {d.status for d in webhooks} == {200}

    await open_card(user, "cluster_helper_bot")
    await user.press("Edit prompt")
    await user.wait_for(text_contains="Send the new instructions")
    await user.send("You are a pirate.")
    await user.wait_for(text_contains="has new instructions", timeout=60)
    (new_pod,) = cluster.kube.objects("pods", "agents")
    assert new_pod["metadata"]["name"] != pod["metadata"]["name"]  # rolled out
    await friend.send("ahoy")
    await friend.wait_for(text_contains="echo: ahoy", timeout=30)
    assert system_prompt(openai_server) == "You are a pirate."
    assert said_before(openai_server) == ["hi there", "echo: hi there", "ahoy"]  # remembered

    # Forgetting reaches the running pod through its Service (the manager is let in).
    await open_card(user, "cluster_helper_bot")
    await user.press("Forget conversations")
    await user.press("Yes, forget everything")
    await user.wait_for(text_contains="has forgotten every conversation.", timeout=30)
    (same_pod,) = cluster.kube.objects("pods", "agents")
    assert same_pod["metadata"]["name"] == new_pod["metadata"]["name"]  # told, not restarted
    await friend.send("who?")
    await friend.wait_for(text_contains="echo: who?", timeout=30)
    assert said_before(openai_server) == ["who?"]

    await open_card(user, "cluster_helper_bot")
    await user.press("Stop")
    await user.wait_for(text_contains="is stopped", timeout=30)
    await until(lambda: not cluster.kube.objects("pods", "agents"))
    assert not cluster.kubelet.processes("agents")


async def test_managed_bot_in_two_taps_answers_through_the_ingress(
    cluster: Cluster, telegram: FakeTelegram, openai_server: FakeOpenAI
) -> None:
    user = telegram.user(cluster.manager.fake, first_name="Dana")
    await user.send("/deploy")
    await user.wait_for(text_contains="Create a new bot")
    managed = await user.create_managed_bot(username="dana_cluster_bot", name="Dana's AI")
    await user.wait_for(text_contains="Got it: @dana_cluster_bot")
    await user.press("OpenAI · gpt-4o")
    await user.wait_for(text_contains="Last step")
    await user.send("You answer questions about gardening.")
    await user.wait_for(text_contains="Ready to deploy")
    await user.press("Deploy")
    await user.wait_for(text_contains="@dana_cluster_bot is live", timeout=60)
    friend = telegram.user(managed, first_name="Gardener")
    await friend.send("roses?")
    await friend.wait_for(text_contains="echo: roses?", timeout=30)
    assert system_prompt(openai_server) == "You answer questions about gardening."
    kinds = {"istio": "virtualservices", "gateway-api": "httproutes"}
    assert len(cluster.kube.objects(kinds[cluster.router], "agents")) == 1
