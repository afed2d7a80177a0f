"""Pure functions: one agent's Kubernetes objects, from its spec and the cluster settings.

Secrets reach the pod only through the Secret (`envFrom`), never as literal env
values. The pod meets the "restricted" Pod Security Standard. Pod-template
annotations carry the revision and a hash of the secret data, so an edit or a
token rotation rolls the pod while re-applying the same spec changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from manager_bot.backends.base import (
    AGENT_ID_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RUNTIME_PORT,
    AgentSpec,
    object_name,
)

JsonDict = dict[str, Any]
RUNTIME_USER = 10001
SERVICE_PORT = 80


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


def labels(agent_id: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, AGENT_ID_LABEL: agent_id}


def webhook_path(spec: AgentSpec, cluster: ClusterConfig) -> str:
    return f"{cluster.path_prefix}/webhook/{spec.agent_id}"


def _metadata(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    return {
        "name": object_name(spec.agent_id),
        "namespace": cluster.namespace,
        "labels": labels(spec.agent_id),
    }


def secret_data(spec: AgentSpec) -> dict[str, str]:
    data = {
        "BOT_TOKEN": spec.secrets.bot_token.get_secret_value(),
        "WEBHOOK_SECRET": spec.secrets.webhook_secret.get_secret_value(),
    }
    if spec.secrets.llm_api_key is not None:
        data["LLM_API_KEY"] = spec.secrets.llm_api_key.get_secret_value()
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
    """The runtime contract's non-secret settings, as literal env values."""
    values = {
        "AGENT_ID": spec.agent_id,
        "MODE": "webhook",
        "PORT": str(RUNTIME_PORT),
        "LLM_MODEL": spec.llm_model,
        "LLM_PROVIDER": spec.llm_provider,
        "SYSTEM_PROMPT": spec.system_prompt,
        "TELEGRAM_API_URL": spec.telegram_api_url,
        "HISTORY_LIMIT": str(spec.history_limit),
    }
    if spec.llm_base_url:
        values["LLM_BASE_URL"] = spec.llm_base_url
    if spec.llm_api_version:
        values["LLM_API_VERSION"] = spec.llm_api_version
    if spec.allowed_user_ids:
        values["ALLOWED_USER_IDS"] = ",".join(map(str, spec.allowed_user_ids))
    return [{"name": name, "value": value} for name, value in values.items()]


def secret_hash(spec: AgentSpec) -> str:
    digest = hashlib.sha256(json.dumps(secret_data(spec), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def deployment(spec: AgentSpec, cluster: ClusterConfig) -> JsonDict:
    name = object_name(spec.agent_id)
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20}
    container: JsonDict = {
        "name": "agent",
        "image": cluster.image,
        "args": ["runtime"],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": runtime_env(spec),
        "envFrom": [{"secretRef": {"name": name}}],
        "resources": {
            "requests": {"cpu": cluster.cpu_request, "memory": cluster.memory_request},
            "limits": {"cpu": cluster.cpu_limit, "memory": cluster.memory_limit},
        },
        "livenessProbe": {**probe, "initialDelaySeconds": 5, "failureThreshold": 3},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
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
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, cluster),
        "spec": {
            "replicas": 1 if spec.running else 0,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {AGENT_ID_LABEL: spec.agent_id}},
            # One pod per bot token: never two pollers/handlers racing during a rollout.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": labels(spec.agent_id),
                    "annotations": {
                        "hatchbot.io/revision": str(spec.revision),
                        "hatchbot.io/secret-hash": secret_hash(spec),
                    },
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
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
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
    """Ingress: the gateway (webhooks) and the manager (probes). Egress: DNS and HTTPS."""
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
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/metadata.name",
                                        "operator": "In",
                                        "values": sources,
                                    }
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": RUNTIME_PORT}],
                }
            ],
            "egress": [
                {
                    "ports": [
                        {"protocol": "UDP", "port": 53},
                        {"protocol": "TCP", "port": 53},
                    ]
                },
                {"ports": [{"protocol": "TCP", "port": 443}]},
            ],
        },
    }


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
    """Every object of one agent, in apply order (the Secret before the pods that read it)."""
    objects = [
        secret(spec, cluster),
        deployment(spec, cluster),
        service(spec, cluster),
        network_policy(spec, cluster),
    ]
    routed = route(spec, cluster)
    if routed is not None:
        objects.append(routed)
    return objects
