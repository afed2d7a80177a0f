"""Deploy-path tests run with the RBAC that `k8s/` grants the manager, enforced."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes import client, config

from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.manifests import ClusterConfig
from tests.fakes.install import manager_kube  # noqa: F401 (the `kube` fixture, overridden)
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.integration.gateway_platform import gateway_env, platform  # noqa: F401 (fixtures)
from tests.integration.world import PUBLIC_URL, World, world_on


@pytest.fixture
async def kube_world(
    kubeconfig: Path, kube: FakeKubernetes, sqlite_url: str, telegram: FakeTelegram,
    openai_server: FakeOpenAI,
) -> AsyncIterator[World]:  # fmt: skip
    """The manager's parts on the fake cluster (pods marked ready as soon as they exist)."""
    kube.auto_ready = True
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    backend = KubernetesBackend(
        api_client=client.ApiClient(configuration),
        cluster=ClusterConfig(
            namespace="agents", image="hatchbot:test", router="istio", public_url=PUBLIC_URL
        ),
        request_timeout=(1, 1),
    )
    try:
        async with world_on(backend, url=sqlite_url, telegram=telegram, llm=openai_server) as world:
            yield world
    finally:
        await backend.close()
