"""`k8s/monitoring/`: the monitoring kit (a kustomize Component) and the metrics it relies on.

The component is rendered by the real `kubectl kustomize` into an install (an overlay
in a temporary directory, as a user's kustomization includes it) and every object is
validated against the prometheus-operator CRDs in tests/fakes/crds/prometheus-operator/.
Alert and dashboard queries are parsed with a real PromQL parser (`promql-parser`, the
Python binding of GreptimeTeam's Rust parser), and every metric they name must be one
the scraped process exports: the names come from the metrics registries themselves
(the manager's global registry, a GatewayMetrics, a runtime's Metrics), not from
grepping. NetworkPolicies are judged by the NetworkPolicy evaluator in tests/fakes.
The metrics the alerts added are shown to move, through the real code paths, on the
real /metrics endpoints.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import manager_bot.metrics  # noqa: F401 (registers the manager's metrics in REGISTRY)
from manager_bot.backends.base import ObservedState
from manager_bot.backends.manifests import agent_manifests, network_policy
from manager_bot.db.models import DesiredState
from manager_bot.gateway.server import GatewayMetrics
from manager_bot.status_server import StatusServer
from runtime.metrics import Metrics
from tests.e2e.conftest import Manager, deploy_directly, give_up_after, kube_manager
from tests.fakes.install import K8S_DIR, manager_kube, rendered
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.network_policy import Endpoint, allows, selector_matches
from tests.fakes.schemas import validate
from tests.fakes.telegram_api import FakeTelegram
from tests.install.test_k8s_install import cluster_for, spec
from tests.integration.gateway_platform import MESSAGES, Platform, gateway_env, platform

__all__ = ["gateway_env", "give_up_after", "kube_manager", "manager_kube", "platform"]  # fixtures

JsonDict = dict[str, Any]
Scraped = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # one /metrics read
REPO = Path(__file__).resolve().parents[2]
MONITORING_DIR = K8S_DIR / "monitoring"
VARIANTS = {"istio": K8S_DIR, "gateway-api": K8S_DIR / "gateway-api"}
MONITORING_GROUP = "monitoring.coreos.com"
# `up` is not exported by any process: Prometheus records it for every target it scrapes.
PROMETHEUS_MADE = frozenset({"up"})
# Grafana's own variables in dashboard queries, and what they stand for when parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
PROMETHEUS = Endpoint(
    ip="10.9.0.10", namespace="monitoring", pod_labels={"app.kubernetes.io/name": "prometheus"}
)


# -- rendering -------------------------------------------------------------------------


def render_overlay(base: Path, extra: JsonDict | None = None) -> list[JsonDict]:
    """`kubectl kustomize` of an overlay that includes `base` and the monitoring component,
    as a user's own kustomization would (plus `extra` fields, e.g. patches)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render k8s/ (kubectl kustomize)")
    with tempfile.TemporaryDirectory() as directory:
        # kustomize takes no absolute paths: point at the repository relatively.
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(base, directory)],
            "components": [os.path.relpath(MONITORING_DIR, directory)],
            **(extra or {}),
        }
        Path(directory, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        output = subprocess.run(
            [kubectl, "kustomize", directory], check=True, capture_output=True, text=True
        ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@functools.cache
def _with_monitoring(variant: str) -> str:
    return yaml.safe_dump_all(render_overlay(VARIANTS[variant]))


def with_monitoring(variant: str = "istio") -> list[JsonDict]:
    return [doc for doc in yaml.safe_load_all(_with_monitoring(variant)) if doc]


def the(objects: list[JsonDict], kind: str, name: str) -> JsonDict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def identities(objects: list[JsonDict]) -> set[tuple[str, str | None, str]]:
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}


def dashboard(objects: list[JsonDict]) -> JsonDict:
    config_map = the(objects, "ConfigMap", "hatchbot-grafana-dashboard")
    (text,) = config_map["data"].values()
    loaded: JsonDict = json.loads(text)
    return loaded


# -- what each scrape target exports -----------------------------------------------------

# A family's type -> the sample names it is exposed under (the Prometheus text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exposed_names(registry: CollectorRegistry) -> frozenset[str]:
    """Every sample name the registry's /metrics can show, children or not."""
    return frozenset(
        family.name + suffix for family in registry.collect() for suffix in _SUFFIXES[family.type]
    )


def exported_by_job() -> dict[str, frozenset[str]]:
    """What each job of k8s/monitoring/scrape.yaml scrapes, from the code's registries."""
    return {
        "hatchbot-manager": exposed_names(REGISTRY),  # status_server serves REGISTRY
        "hatchbot-llm-gateway": exposed_names(GatewayMetrics().registry),
        "hatchbot-agents": exposed_names(Metrics().registry),
    }


# -- queries -----------------------------------------------------------------------------


def selectors(expression: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric name, {label: (operator, value)}) of every series selector in a query."""
    found: list[tuple[str, dict[str, tuple[str, str]]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {
                m.name: (str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers
            }
            name = node.name or matchers.get("__name__", ("", ""))[1]
            found.append((name, matchers))

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def alert_rules(objects: list[JsonDict]) -> list[JsonDict]:
    rule = the(objects, "PrometheusRule", "hatchbot")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_queries(board: JsonDict) -> list[str]:
    def panels(items: list[JsonDict]) -> Iterator[JsonDict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    return [
        target["expr"] for panel in panels(board["panels"]) for target in panel.get("targets", [])
    ]


def without_grafana_variables(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    assert "$" not in query, f"an unknown Grafana variable in {query!r}"
    return query


def check_names(query: str, exported: dict[str, frozenset[str]]) -> None:
    found = selectors(query)
    assert found, query
    for name, matchers in found:
        assert name, f"a selector without a metric name in {query!r}"
        operator, job = matchers.get("job", ("", ""))
        assert operator == "Equal" and job in exported, f"{name} names no scraped job: {query!r}"
        if name not in PROMETHEUS_MADE:
            assert name in exported[job], f"{job} does not export {name} ({query!r})"


# -- the objects -------------------------------------------------------------------------


def test_the_component_is_not_installed_by_default() -> None:
    for variant in VARIANTS:
        assert not [o for o in rendered(variant) if o["apiVersion"].startswith(MONITORING_GROUP)]
    component = yaml.safe_load((MONITORING_DIR / "kustomization.yaml").read_text())
    assert (component["apiVersion"], component["kind"]) == (
        "kustomize.config.k8s.io/v1alpha1", "Component",
    )  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_with_monitoring_validates_against_its_schema(variant: str) -> None:
    objects = with_monitoring(variant)
    for obj in objects:
        validate(obj)  # prometheus-operator kinds against the vendored CRDs
    added = identities(objects) - identities(rendered(variant))
    assert added == {
        ("ServiceMonitor", "hatchbot-system", "hatchbot-manager"),
        ("ServiceMonitor", "hatchbot-system", "hatchbot-llm-gateway"),
        ("PodMonitor", "hatchbot-system", "hatchbot-agents"),
        ("PrometheusRule", "hatchbot-system", "hatchbot"),
        ("NetworkPolicy", "agents", "hatchbot-agents-metrics"),
        ("NetworkPolicy", "hatchbot-system", "hatchbot-llm-gateway-metrics"),
        ("NetworkPolicy", "hatchbot-system", "hatchbot-manager-metrics"),
        ("ConfigMap", "hatchbot-system", "hatchbot-grafana-dashboard"),
    }
    config_map = the(objects, "ConfigMap", "hatchbot-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_monitors_find_the_manager_the_gateway_and_the_agents_on_their_metrics_ports() -> None:
    objects = with_monitoring()
    for name, port_name in (("hatchbot-manager", "metrics"), ("hatchbot-llm-gateway", "http")):
        monitor = the(objects, "ServiceMonitor", name)
        service = the(objects, "Service", name)
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
        assert endpoint["port"] == port_name and endpoint["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": name} in endpoint[
            "relabelings"
        ]
    # Agents: the pods the manager makes, in the namespace it makes them in.
    cluster = cluster_for("istio")
    deployment = next(
        o for o in agent_manifests(spec("agent00001"), cluster) if o["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]
    monitor = the(objects, "PodMonitor", "hatchbot-agents")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [cluster.namespace]
    assert selector_matches(monitor["spec"]["selector"], pod["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    assert (
        endpoint["port"] in [p["name"] for p in container["ports"]]
        and endpoint["path"] == "/metrics"
    )
    label = "hatchbot.io/agent-id"
    assert pod["metadata"]["labels"][label] == "agent00001"
    assert {
        "action": "replace", "targetLabel": "agent_id",
        "sourceLabels": ["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)],
    } in endpoint["relabelings"]  # fmt: skip


# -- alerts and dashboard queries ----------------------------------------------------------


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    names = {rule["alert"] for rule in alert_rules(with_monitoring())}
    assert {
        "HatchbotManagerDown", "HatchbotHealthSweepFailing", "HatchbotHealthSweepStalled",
        "HatchbotAgentsDown", "HatchbotBroadcastStuck", "HatchbotLLMBudgetExhaustion",
    } <= names  # fmt: skip


def test_every_alert_expression_parses_and_names_only_exported_metrics() -> None:
    exported = exported_by_job()
    for rule in alert_rules(with_monitoring()):
        check_names(str(rule["expr"]), exported)
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_dashboard_query_parses_and_names_only_exported_metrics() -> None:
    board = dashboard(with_monitoring())
    queries = dashboard_queries(board)
    assert len(queries) >= 10
    exported = exported_by_job()
    for query in queries:
        check_names(without_grafana_variables(query), exported)


def test_label_values_in_queries_are_ones_the_code_writes() -> None:
    """The agents gauge's states come from the code's enums: a renamed state would
    silently empty a `observed=~"..."` selector."""
    states = {
        "observed": {state.value for state in ObservedState} | {"unknown"},  # never observed
        "desired": {state.value for state in DesiredState},
    }
    queries = [str(r["expr"]) for r in alert_rules(with_monitoring())]
    queries += [
        without_grafana_variables(q) for q in dashboard_queries(dashboard(with_monitoring()))
    ]
    checked = 0
    for query in queries:
        for name, matchers in selectors(query):
            if name != "hatchbot_manager_agents":
                continue
            for label, (operator, value) in matchers.items():
                if label in states:
                    values = value.split("|") if operator in ("Re", "NotRe") else [value]
                    assert set(values) <= states[label], query
                    checked += 1
    assert checked


# -- network policies --------------------------------------------------------------------


def pod_of(deployment: JsonDict, ip: str) -> Endpoint:
    template = deployment["spec"]["template"]
    ports = {
        port["name"]: port["containerPort"]
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
    }
    return Endpoint(
        ip=ip, namespace=deployment["metadata"]["namespace"],
        pod_labels=template["metadata"]["labels"], named_ports=ports,
    )  # fmt: skip


def metrics_targets(objects: list[JsonDict]) -> dict[str, tuple[Endpoint, int]]:
    """The manager, a gateway replica and one agent, each with its metrics port."""
    agent = agent_manifests(spec("agent00001"), cluster_for("istio"))
    return {
        "manager": (pod_of(the(objects, "Deployment", "hatchbot-manager"), "10.1.0.5"), 9090),
        "gateway": (pod_of(the(objects, "Deployment", "hatchbot-llm-gateway"), "10.1.0.6"), 8080),
        "agent": (pod_of(next(o for o in agent if o["kind"] == "Deployment"), "10.2.0.7"), 8080),
    }


def policies_of(objects: list[JsonDict]) -> list[JsonDict]:
    """The install's policies plus the one the manager writes for the agent."""
    installed = [o for o in objects if o["kind"] == "NetworkPolicy"]
    return [*installed, network_policy(spec("agent00001"), cluster_for("istio"))]


def test_prometheus_reaches_every_metrics_port_and_nobody_else_does() -> None:
    objects = with_monitoring()
    policies = policies_of(objects)
    elsewhere = [
        # Prometheus' labels in another namespace, and another pod of `monitoring`.
        Endpoint(ip="10.9.1.10", namespace="default", pod_labels={"app.kubernetes.io/name": "prometheus"}),
        Endpoint(ip="10.9.0.11", namespace="monitoring", pod_labels={"app.kubernetes.io/name": "grafana"}),
    ]  # fmt: skip
    for name, (target, port) in metrics_targets(objects).items():
        assert allows(policies, {}, source=PROMETHEUS, destination=target, port=port), name
        for other in elsewhere:
            assert not allows(policies, {}, source=other, destination=target, port=port), name
    # Without the component, Prometheus cannot reach an agent (what issue 18 found).
    without = policies_of(rendered("istio"))
    target, port = metrics_targets(objects)["agent"]
    assert not allows(without, {}, source=PROMETHEUS, destination=target, port=port)


def test_the_kits_policies_take_nothing_away() -> None:
    objects = with_monitoring()
    policies = policies_of(objects)
    targets = metrics_targets(objects)
    agent, gateway = targets["agent"][0], targets["gateway"][0]
    manager_pod = targets["manager"][0]
    ingress = Endpoint(
        ip="10.3.0.2", namespace="istio-system", pod_labels={"app": "istio-ingressgateway"}
    )
    assert allows(policies, {}, source=ingress, destination=agent, port=8080)  # webhooks
    assert allows(policies, {}, source=manager_pod, destination=agent, port=8080)  # probes
    assert allows(policies, {}, source=agent, destination=gateway, port=8080)  # completions
    assert allows(policies, {}, source=manager_pod, destination=gateway, port=8080)
    assert not allows(policies, {}, source=PROMETHEUS, destination=agent, port=9999)


def documented_patches() -> list[JsonDict]:
    """The `patches` of the README's example kustomization for another Prometheus."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    (example,) = [yaml.safe_load(block) for block in blocks if "hatchbot.io/allows" in block]
    assert "monitoring" in example["components"]
    patches: list[JsonDict] = example["patches"]
    return patches


def test_the_documented_patch_admits_another_prometheus_and_labels_the_monitors() -> None:
    objects = render_overlay(K8S_DIR, {"patches": documented_patches()})
    for obj in objects:
        validate(obj)
    policies = policies_of(objects)
    moved = Endpoint(
        ip="10.9.2.10", namespace="observability",
        pod_labels={"app.kubernetes.io/name": "prometheus", "operator.prometheus.io/name": "k8s"},
    )  # fmt: skip
    for name, (target, port) in metrics_targets(objects).items():
        assert allows(policies, {}, source=moved, destination=target, port=port), name
        assert not allows(policies, {}, source=PROMETHEUS, destination=target, port=port), name
    for kind, name in (
        ("ServiceMonitor", "hatchbot-manager"), ("ServiceMonitor", "hatchbot-llm-gateway"),
        ("PodMonitor", "hatchbot-agents"), ("PrometheusRule", "hatchbot"),
    ):  # fmt: skip
        assert the(objects, kind, name)["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# -- the metrics the alerts added move when their event happens ----------------------------


async def scrape(url: str) -> Scraped:
    """One Prometheus scrape: {(sample name, sorted labels): value}."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def manager_env() -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-platformkeyplatformkey00"}


@pytest.fixture
async def status_url(kube_manager: Manager) -> AsyncIterator[str]:
    """The manager's /metrics, served as `run_manager` serves it (the test's Manager
    assembles the parts but serves no status port)."""
    status = StatusServer(agent_counts=kube_manager.deployer.queries.agent_counts)
    await status.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{status.port}/metrics"
    finally:
        await status.stop()


LAST_SWEEP = "hatchbot_manager_health_sweep_last_success_timestamp_seconds"


def failed(seen: Scraped) -> float:
    return seen[("hatchbot_manager_health_sweeps_total", (("outcome", "failed"),))]


def ok(seen: Scraped) -> float:
    return seen[("hatchbot_manager_health_sweeps_total", (("outcome", "ok"),))]


async def test_failed_and_successful_sweeps_show_on_the_managers_metrics(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes, status_url: str
) -> None:
    url = status_url
    user = telegram.user(kube_manager.fake)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot")
    await deploy_directly(kube_manager, telegram, user.id, "swept_bot")
    before = await scrape(url)
    kube.inject_fault(status=503, verb="list", resource="deployments", times=100)
    assert await kube_manager.scheduler.health_check() is None  # the cluster cannot be read
    after_failure = await scrape(url)
    assert failed(after_failure) == failed(before) + 1 and ok(after_failure) == ok(before)
    assert after_failure[(LAST_SWEEP, ())] == before[(LAST_SWEEP, ())]
    kube.clear_faults()
    assert await kube_manager.scheduler.health_check() is not None
    after_success = await scrape(url)
    assert ok(after_success) == ok(before) + 1 and failed(after_success) == failed(after_failure)
    assert after_success[(LAST_SWEEP, ())] > before[(LAST_SWEEP, ())]
    # What HatchbotAgentsDown divides by: the agent, running as the sweep saw it.
    agents = ("hatchbot_manager_agents", (("desired", "running"), ("observed", "running")))
    assert after_success[agents] == 1


async def test_a_spent_budget_shows_on_the_gateways_metrics(platform: Platform) -> None:
    """What the budget alert divides: refusals for a spent budget among all completions."""
    platform.llm.reply_with("word " * 40)  # 44 tokens a completion: the third is over 100
    _, credential = await platform.agent(daily_token_budget=100)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                f"{platform.gateway.url}/chat/completions",
                json={"model": "gpt-4o", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {credential}"},
            ) as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 429]
    seen = await scrape(platform.gateway.url.removesuffix("/v1") + "/metrics")
    requests = "hatchbot_gateway_requests_total"
    assert seen[(requests, (("outcome", "daily_budget_exhausted"),))] == 1
    assert seen[(requests, (("outcome", "ok"),))] == 2
