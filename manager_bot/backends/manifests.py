"""Pure functions: one agent's Kubernetes objects, from its spec and the cluster settings.

Secrets reach the pod only through `secretKeyRef`, never as literal env values.
Nothing a user writes becomes configuration: the kubelet expands `$(NAME)` in
every literal env value (against the variables defined before it, secrets
included), so each literal goes through `kubelet_literal`, and the system prompt
is not an env value at all but a file mounted from the agent's Secret. The pod
meets the "restricted" Pod Security Standard. A pod-template annotation hashes
everything the pod sees, so an edit or a token rotation rolls the pod, while a
change only the gateway sees (a new LLM key) and a re-apply of the same spec
change nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from manager_bot.backends.base import (
    AGENT_ID_LABEL,
    INSTALLATION_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RUNTIME_PORT,
    AgentSpec,
    memory_url,
    object_name,
)

JsonDict = dict[str, Any]
RUNTIME_USER = 10001
SERVICE_PORT = 80
GATEWAY_PORT = 8080  # the LLM gateway pods' port (k8s/base/llm-gateway.yaml)
GATEWAY_COMPONENT = {"app.kubernetes.io/component": "llm-gateway"}
CONFIG_MOUNT = "/etc/hatchbot/agent"
PROMPT_KEY = "system-prompt"
SECRET_ENV = ("BOT_TOKEN", "WEBHOOK_SECRET", "LLM_API_KEY")
CONFIG_HASH = "hatchbot.io/config-hash"  # pod-template annotation: all the pod sees
# Egress to 443 goes to public addresses only: never the cluster, the node's
# metadata service or anything private (plus the operator's cluster CIDRs).
NON_PUBLIC_CIDRS = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
    "100.64.0.0/10", "0.0.0.0/8",
)  # fmt: skip


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how agents run; built from the manager's settings."""

    namespace: str
    image: str
    router: str  # istio | gateway-api | none
    public_url: str
    gateway: str = (
        "hatchbot-system/hatchbot-gateway"  # namespace/name of the (Istio or Gateway API) Gateway
    )
    ingress_namespace: str = "istio-system"  # where the ingress gateway pods run
    manager_namespace: str = "hatchbot-system"  # the manager probes agents from here
    # Where the manager reaches agents' /readyz and /metrics; None: the Service's
    # cluster DNS name. Set (to "<base>/agent-<id>") only where that name does not resolve.
    probe_base: str | None = None
    cluster_cidrs: tuple[str, ...] = ()  # K8S_CLUSTER_CIDRS: pod and service ranges
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = "500m"
    memory_limit: str = "192Mi"

    @property
    def public_host(self) -> str:
        return urlsplit(self.public_url).hostname or ""

    @property
    def path_prefix(self) -> str:
        return urlsplit(self.public_url).path.rstrip("/")

    @property
    def gateway_namespace(self) -> str:
        return self.gateway.split("/", 1)[0] if "/" in self.gateway else self.namespace

    @property
    def gateway_name(self) -> str:
        return self.gateway.split("/", 1)[-1]


def labels(agent_id: str, installation: str = "") -> dict[str, str]:
    found = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, AGENT_ID_LABEL: agent_id}
    if installation:
        found[INSTALLATION_LABEL] = installation
    return found


def webhook_path(spec: AgentSpec, cluster: ClusterConfig) -> str:
    return f"{cluster.path_prefix}/webhook/{spec.agent_id}"


def _metadata(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    return {
        "name": object_name(spec.agent_id),
        "namespace": cluster.namespace,
        "labels": labels(spec.agent_id, spec.installation),
    }


def kubelet_literal(value: str) -> str:
    """A literal env value as the kubelet must pass it on: `$$` is its escape for `$`, so
    no `$(NAME)` inside it can expand into another variable (a secret, say)."""
    return value.replace("$", "$$")


def secret_data(spec: AgentSpec) -> dict[str, str]:
    """The agent's Secret: its bot token, webhook secret and gateway credential (never a
    provider key), and the system prompt, mounted as a file."""
    data = {
        "BOT_TOKEN": spec.secrets.bot_token.get_secret_value(),
        "WEBHOOK_SECRET": spec.secrets.webhook_secret.get_secret_value(),
        PROMPT_KEY: spec.system_prompt,
    }
    if spec.secrets.gateway_key is not None:
        data["LLM_API_KEY"] = spec.secrets.gateway_key.get_secret_value()
    return data


def secret(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, cluster),
        "type": "Opaque",
        "stringData": secret_data(spec),
    }


def runtime_env(spec: AgentSpec) -> list[JsonDict]:
    """The runtime contract: secrets by reference, the rest as escaped literal values."""
    name = object_name(spec.agent_id)
    secret_refs: list[JsonDict] = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
        for key in SECRET_ENV
        if key != "LLM_API_KEY" or spec.secrets.gateway_key is not None
    ]
    values = {
        "AGENT_ID": spec.agent_id,
        "MODE": "webhook",
        "PORT": str(RUNTIME_PORT),
        "LLM_MODEL": spec.llm_model,
        "SYSTEM_PROMPT_FILE": f"{CONFIG_MOUNT}/{PROMPT_KEY}",
        "TELEGRAM_API_URL": spec.telegram_api_url,
        "HISTORY_LIMIT": str(spec.history_limit),
        "LLM_VISION": "true" if spec.llm_vision else "false",
    }
    if spec.llm_base_url:
        values["LLM_BASE_URL"] = spec.llm_base_url
    if kept_at := memory_url(spec):
        values["MEMORY_URL"] = kept_at
        values["MEMORY_IDLE_DAYS"] = str(spec.memory_idle_days)
    if spec.allowed_user_ids:
        values["ALLOWED_USER_IDS"] = ",".join(map(str, spec.allowed_user_ids))
    if spec.mcp_servers:  # only then: agents without tools keep their pods as they are
        values["MCP_SERVERS"] = ",".join(spec.mcp_servers)
    literals = [{"name": key, "value": kubelet_literal(value)} for key, value in values.items()]
    return secret_refs + literals


def config_hash(spec: AgentSpec) -> str:
    """Everything the pod sees (env and Secret): a change rolls it, nothing else does."""
    seen = {"env": runtime_env(spec), "secret": secret_data(spec)}
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:16]


def deployment(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    name = object_name(spec.agent_id)
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20}
    container: JsonDict = {
        "name": "agent",
        "image": cluster.image,
        "args": ["runtime"],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": runtime_env(spec),
        "resources": {
            "requests": {"cpu": cluster.cpu_request, "memory": cluster.memory_request},
            "limits": {"cpu": cluster.cpu_limit, "memory": cluster.memory_limit},
        },
        "livenessProbe": {**probe, "initialDelaySeconds": 5, "failureThreshold": 3},
        # Probed every second: a new agent takes traffic about a second after it listens,
        # not after the next of 5-second probes (the first one comes before it listens).
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_USER,
            "runAsGroup": RUNTIME_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **_metadata(spec, cluster),
            "annotations": {"hatchbot.io/revision": str(spec.revision)},
        },
        "spec": {
            "replicas": 1 if spec.running else 0,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {AGENT_ID_LABEL: spec.agent_id}},
            # One pod per bot token: never two pollers/handlers racing during a rollout.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": labels(spec.agent_id, spec.installation),
                    "annotations": {CONFIG_HASH: config_hash(spec)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 15,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                        {
                            "name": "config",
                            "secret": {
                                "secretName": name,
                                "items": [{"key": PROMPT_KEY, "path": PROMPT_KEY}],
                                "defaultMode": 0o444,
                            },
                        },
                    ],
                },
            },
        },
    }


def service(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "type": "ClusterIP",
            "selector": {AGENT_ID_LABEL: spec.agent_id},
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def network_policy(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    """Ingress: the ingress gateway (webhooks) and the manager (probes).
    Egress: cluster DNS, the LLM gateway, and HTTPS to public addresses (Telegram)."""
    sources = sorted({cluster.ingress_namespace, cluster.manager_namespace})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "podSelector": {"matchLabels": {AGENT_ID_LABEL: spec.agent_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"namespaceSelector": _namespaces(*sources)}],
                    "ports": [{"protocol": "TCP", "port": RUNTIME_PORT}],
                }
            ],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": _namespaces("kube-system"),
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [
                        {"protocol": "UDP", "port": 53},
                        {"protocol": "TCP", "port": 53},
                    ],
                },
                {
                    "to": [
                        {
                            "namespaceSelector": _namespaces(cluster.manager_namespace),
                            "podSelector": {"matchLabels": dict(GATEWAY_COMPONENT)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": GATEWAY_PORT}],
                },
                {
                    "to": [_public_internet(cluster)],
                    "ports": [{"protocol": "TCP", "port": 443}],
                },
            ],
        },
    }


def _namespaces(*names: str) -> JsonDict:
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(names)}
        ]
    }


def _public_internet(cluster: ClusterConfig) -> JsonDict:
    """0.0.0.0/0 but the private, loopback, link-local and cluster ranges (IPv4: the
    ipBlock's `except` must lie inside its CIDR)."""
    excluded = list(NON_PUBLIC_CIDRS)
    for cidr in cluster.cluster_cidrs:
        if ":" not in cidr and cidr not in excluded:
            excluded.append(cidr)
    return {"ipBlock": {"cidr": "0.0.0.0/0", "except": excluded}}


def route(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict | None:
    """`PUBLIC_URL/webhook/<id>` to the agent's Service, per K8S_ROUTER."""
    path = webhook_path(spec, cluster)
    name = object_name(spec.agent_id)
    if cluster.router == "istio":
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": _metadata(spec, cluster),
            "spec": {
                "hosts": [cluster.public_host],
                "gateways": [f"{cluster.gateway_namespace}/{cluster.gateway_name}"],
                "http": [
                    {
                        "name": "webhook",
                        "match": [{"uri": {"exact": path}, "method": {"exact": "POST"}}],
                        "route": [
                            {
                                "destination": {
                                    "host": f"{name}.{cluster.namespace}.svc.cluster.local",
                                    "port": {"number": SERVICE_PORT},
                                }
                            }
                        ],
                    }
                ],
            },
        }
    if cluster.router == "gateway-api":
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _metadata(spec, cluster),
            "spec": {
                "parentRefs": [
                    {"name": cluster.gateway_name, "namespace": cluster.gateway_namespace}
                ],
                "hostnames": [cluster.public_host],
                "rules": [
                    {
                        "matches": [{"path": {"type": "Exact", "value": path}, "method": "POST"}],
                        "backendRefs": [{"name": name, "port": SERVICE_PORT}],
                    }
                ],
            },
        }
    return None


def agent_manifests(spec: AgentSpec, cluster: ClusterConfig) -> list[JsonDict]:
    """Every object of one agent, in apply order: the NetworkPolicy before any pod exists,
    the Secret before the pods that read it."""
    objects = [
        network_policy(spec, cluster),
        secret(spec, cluster),
        deployment(spec, cluster),
        service(spec, cluster),
    ]
    routed = route(spec, cluster)
    if routed is not None:
        objects.append(routed)
    return objects
