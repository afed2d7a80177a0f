"""Cost of one health sweep over many agents, against the fakes, through the real code.

Prints one JSON object:
{"2000": {"seconds": s, "k8s_calls": n, "db_queries": n, "telegram_calls": n, "probes": n},
 "10000": {...}, "seconds_per_agent_ratio": r}
Targets: k8s_calls and db_queries do not grow with the number of agents (the
per-agent probes, /readyz + /metrics + getWebhookInfo, run concurrently with a
bound); a 10,000-agent sweep under 30 s. `seconds_per_agent_ratio` compares the
larger sweep's per-agent cost with the smaller one's, measured in the same run.
Usage: python bench/health.py [--agents 2000 10000]
"""

from __future__ import annotations

import argparse
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
from sqlalchemy import event, insert  # noqa: E402

from manager_bot.backends.base import AgentSecrets, AgentSpec  # noqa: E402
from manager_bot.backends.kubernetes import KubernetesBackend  # noqa: E402
from manager_bot.backends.manifests import ClusterConfig, agent_manifests  # noqa: E402
from manager_bot.crypto import Vault, generate_key  # noqa: E402
from manager_bot.db.migrate import upgrade  # noqa: E402
from manager_bot.db.models import Agent, User  # noqa: E402
from manager_bot.db.session import Database  # noqa: E402
from manager_bot.services.deployer import Deployer, DeployerConfig  # noqa: E402
from manager_bot.services.health import HealthConfig, HealthMonitor  # noqa: E402
from manager_bot.services.telegram import AgentTelegram  # noqa: E402
from tests.fakes.agent_pods import FakeAgentPods  # noqa: E402
from tests.fakes.kubernetes_api import FakeKubernetes  # noqa: E402
from tests.fakes.telegram_api import FakeTelegram, WebhookState, make_token  # noqa: E402

PUBLIC_URL = "https://bots.example.com"
OWNER = 1


def agent_id(index: int) -> str:
    return f"h{index:09d}"


def populate_cluster(kube: FakeKubernetes, cluster: ClusterConfig, count: int) -> None:
    """Each agent's Secret and a ready Deployment, written behind the API's back."""
    secrets = AgentSecrets(bot_token=SecretStr(make_token(1)), webhook_secret=SecretStr("s" * 40))
    for index in range(count):
        spec = AgentSpec(
            agent_id=agent_id(index), secrets=secrets, llm_model="m", system_prompt="Hi"
        )
        secret, deployment = agent_manifests(spec, cluster)[:2]
        kube.put_object("secrets", secret)
        kube.put_object("deployments", deployment)  # auto_ready: its Pod comes up at once


async def populate_database(database: Database, vault: Vault, tokens: list[str]) -> None:
    async with database.session() as session:
        await session.execute(insert(User), [{"id": OWNER, "first_name": "Owner"}])
        rows = [
            {
                "id": agent_id(index), "owner_id": OWNER, "name": "Agent",
                "bot_id": int(token.split(":")[0]), "bot_username": f"bench{index}_bot",
                "token_encrypted": vault.encrypt(token),
                "webhook_secret_encrypted": vault.encrypt("s" * 40), "provider": "openai",
                "model": "gpt-4o-mini", "system_prompt": "Hi", "revision": 1,
                "desired_state": "running",
            }
            for index, token in enumerate(tokens)
        ]  # fmt: skip
        await session.execute(insert(Agent), rows)


async def sweep_once(count: int, scratch: Path) -> dict[str, Any]:
    telegram, pods = FakeTelegram(), FakeAgentPods()
    await telegram.start()
    await pods.start()
    tokens = []
    for index in range(count):
        bot = telegram.add_bot(username=f"bench{index}_bot")
        bot.webhook = WebhookState(url=f"{PUBLIC_URL}/webhook/{agent_id(index)}")
        tokens.append(bot.token)
    url = f"sqlite+aiosqlite:///{scratch / f'health{count}.db'}"
    await upgrade(url)
    database, vault = Database(url), Vault([generate_key()])
    await populate_database(database, vault, tokens)
    queries = 0

    def count_query(*_: object) -> None:
        nonlocal queries
        queries += 1

    event.listen(database.engine.sync_engine, "before_cursor_execute", count_query)
    cluster = ClusterConfig(
        namespace="agents", image="hatchbot:bench", router="istio", public_url=PUBLIC_URL,
        probe_base=pods.url,
    )  # fmt: skip
    with FakeKubernetes(auto_ready=True) as kube:
        kube.put_object("namespaces", {"metadata": {"name": "agents"}})
        populate_cluster(kube, cluster, count)
        configuration = client.Configuration()
        kubeconfig = kube.write_kubeconfig(scratch / "kubeconfig")
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        backend = KubernetesBackend(api_client=client.ApiClient(configuration), cluster=cluster)
        agent_telegram = AgentTelegram(api_url=telegram.url)
        deployer = Deployer(
            database=database, vault=vault, backend=backend, telegram=agent_telegram,
            providers=[], config=DeployerConfig(
                mode="webhook", public_url=PUBLIC_URL, telegram_api_url=telegram.url,
                max_agents_per_user=count, gateway_url="http://gateway.invalid/v1",
            ),
        )  # fmt: skip
        monitor = HealthMonitor(
            database=database, backend=backend, deployer=deployer,
            config=HealthConfig(webhook_mode=True, expected_webhook=f"{PUBLIC_URL}/webhook/"),
        )  # fmt: skip
        kube.clear_requests()
        calls_before = len(telegram.calls("getWebhookInfo"))
        queries = 0
        started = time.perf_counter()
        report = await monitor.sweep()
        seconds = time.perf_counter() - started
        assert report.swept == count and not report.repaired, report
        healthy = sum(1 for t in report.transitions if t.after.kind == "ok")
        assert healthy == count, f"{healthy} of {count} healthy"
        result = {
            "seconds": round(seconds, 2),
            "k8s_calls": len(kube.requests),
            "db_queries": queries,
            "telegram_calls": len(telegram.calls("getWebhookInfo")) - calls_before,
            "probes": pods.probes,
        }
        await agent_telegram.close()
        await backend.close()
    await database.close()
    await pods.stop()
    await telegram.stop()
    return result


async def main(sizes: list[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for count in sizes:
            result[str(count)] = await sweep_once(count, Path(scratch))
    small, large = str(min(sizes)), str(max(sizes))
    per_agent = {k: result[k]["seconds"] / int(k) for k in (small, large)}
    result["seconds_per_agent_ratio"] = round(per_agent[large] / per_agent[small], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[2000, 10000])
    print(json.dumps(asyncio.run(main(parser.parse_args().agents))))
