"""Cost of the Kubernetes backend against the fake API server, through the real client.

Prints one JSON object:
{"api_calls_per_deploy": n,
 "observe_all": {"1": {"api_calls": n, "seconds": s}, "100": {...}, "2000": {...}}}
Targets: at most 6 calls per deploy; observe_all's calls do not grow with agents.
Usage: python bench/deploy.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from manager_bot.backends.base import AgentSecrets, AgentSpec  # noqa: E402
from manager_bot.backends.kubernetes import KubernetesBackend  # noqa: E402
from manager_bot.backends.manifests import ClusterConfig, agent_manifests  # noqa: E402
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402

CLUSTER = ClusterConfig(
    namespace="agents",
    image="hatchbot:bench",
    router="istio",
    public_url="https://bots.example.com",
)


def spec(agent_id: str) -> AgentSpec:
    secrets = AgentSecrets(
        bot_token=SecretStr("7000000001:" + "A" * 35), webhook_secret=SecretStr("s" * 40)
    )
    return AgentSpec(
        agent_id=agent_id, secrets=secrets, llm_model="gpt-4o-mini", system_prompt="Hi"
    )


def populate(kube: FakeKubernetes, count: int) -> None:
    """Agents behind the API's back (fast), each with its Secret, Deployment and ready Pod."""
    for index in range(count):
        for manifest in agent_manifests(spec(f"bench{index:05d}"), CLUSTER):
            plural = {"Secret": "secrets", "Deployment": "deployments"}.get(manifest["kind"])
            if plural is not None:  # what observe_all reads; the rest it never lists
                kube.put_object(plural, manifest)
        kube.mark_ready("agents", f"agent-bench{index:05d}")


async def main() -> dict[str, Any]:
    result: dict[str, Any] = {"observe_all": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for count in (1, 100, 2000):
            with FakeKubernetes() as kube:
                kube.put_object("namespaces", {"metadata": {"name": "agents"}})
                configuration = client.Configuration()
                kubeconfig = kube.write_kubeconfig(Path(scratch) / "kubeconfig")
                config.load_kube_config(
                    config_file=str(kubeconfig), client_configuration=configuration
                )
                backend = KubernetesBackend(
                    api_client=client.ApiClient(configuration), cluster=CLUSTER
                )
                if "api_calls_per_deploy" not in result:
                    kube.clear_requests()
                    await backend.apply(spec("newagent01"))
                    result["api_calls_per_deploy"] = len(kube.requests)
                    await backend.delete("newagent01")
                populate(kube, count)
                kube.clear_requests()
                started = time.perf_counter()
                observed = await backend.observe_all()
                seconds = time.perf_counter() - started
                assert len(observed) == count
                result["observe_all"][str(count)] = {
                    "api_calls": len(kube.requests),
                    "seconds": round(seconds, 3),
                }
                await backend.close()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
