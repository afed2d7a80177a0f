"""The defaults the real API server fills in, for the kinds and fields Hatchbot uses.

They matter beyond looks: they are what a client reads back, and what makes
a "drift" check that compares the live object with the desired one see a
difference on a real cluster.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

JsonDict = dict[str, Any]


def apply_defaults(plural: str, obj: JsonDict) -> None:
    """Fill the defaults of `obj` (in place; the caller owns it)."""
    defaulter = _DEFAULTERS.get(plural)
    if defaulter is not None:
        defaulter(obj)


def _deployment(obj: JsonDict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    _pod_template(spec)


def _replica_set(obj: JsonDict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    _pod_template(spec)


def _pod_template(spec: JsonDict) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        pod_spec(template.setdefault("spec", {}))


def _pod(obj: JsonDict) -> None:
    spec = obj.setdefault("spec", {})
    pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault("serviceAccountName", "default")
    obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})


def pod_spec(spec: JsonDict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if isinstance(container, dict):
            _container(container)
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            for source in ("secret", "configMap"):
                if isinstance(volume.get(source), dict):
                    volume[source].setdefault("defaultMode", 420)


def _container(container: JsonDict) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = str(container.get("image", ""))
    tag = image.rpartition("/")[2].partition("@")[0]
    latest = ":" not in tag or tag.endswith(":latest")
    container.setdefault(
        "imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent"
    )
    for port in container.get("ports", []):
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
        probe = container.get(probe_name)
        if isinstance(probe, dict):
            probe.setdefault("timeoutSeconds", 1)
            probe.setdefault("periodSeconds", 10)
            probe.setdefault("successThreshold", 1)
            probe.setdefault("failureThreshold", 3)
            if isinstance(probe.get("httpGet"), dict):
                probe["httpGet"].setdefault("scheme", "HTTP")
    for variable in container.get("env", []):
        field_ref = (
            variable.get("valueFrom", {}).get("fieldRef") if isinstance(variable, dict) else None
        )
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


def _service(obj: JsonDict) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("clusterIP", _cluster_ip(obj))
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec["clusterIP"] != "None":
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports", []):
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    obj.setdefault("status", {"loadBalancer": {}})


def _cluster_ip(obj: JsonDict) -> str:
    metadata = obj.get("metadata", {})
    seed = f"{metadata.get('namespace')}/{metadata.get('name')}/{metadata.get('uid')}"
    digest = hashlib.sha256(seed.encode()).digest()
    return f"10.96.{digest[0]}.{digest[1] % 254 + 1}"


def _secret(obj: JsonDict) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict) and string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _namespace(obj: JsonDict) -> None:
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    obj.setdefault("status", {"phase": "Active"})
    labels = obj["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def _network_policy(obj: JsonDict) -> None:
    spec = obj.setdefault("spec", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", *(["Egress"] if "egress" in spec else [])]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or [] if isinstance(rule, dict) else []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")


_DEFAULTERS = {
    "deployments": _deployment,
    "replicasets": _replica_set,
    "pods": _pod,
    "services": _service,
    "secrets": _secret,
    "namespaces": _namespace,
    "networkpolicies": _network_policy,
}
