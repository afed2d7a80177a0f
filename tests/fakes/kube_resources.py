"""The API resources the fake Kubernetes API server serves, and their discovery documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Resource:
    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    # Main-resource writes ignore `status`; `/status` writes ignore everything else.
    status_subresource: bool = False
    verbs: tuple[str, ...] = ALL_VERBS

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        version = version or self.preferred_version
        return f"{self.group}/{version}" if self.group else version


RESOURCES: tuple[Resource, ...] = (
    Resource("", ("v1",), "namespaces", "Namespace", namespaced=False, short_names=("ns",),
             status_subresource=True),
    Resource("", ("v1",), "secrets", "Secret"),
    Resource("", ("v1",), "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", ("v1",), "services", "Service", short_names=("svc",), status_subresource=True),
    Resource("", ("v1",), "pods", "Pod", short_names=("po",), status_subresource=True),
    Resource("", ("v1",), "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Resource("", ("v1",), "events", "Event", short_names=("ev",)),
    Resource("apps", ("v1",), "deployments", "Deployment", short_names=("deploy",),
             status_subresource=True),
    Resource("apps", ("v1",), "replicasets", "ReplicaSet", short_names=("rs",),
             status_subresource=True),
    Resource("networking.k8s.io", ("v1",), "networkpolicies", "NetworkPolicy",
             short_names=("netpol",)),
    Resource("rbac.authorization.k8s.io", ("v1",), "roles", "Role"),
    Resource("rbac.authorization.k8s.io", ("v1",), "rolebindings", "RoleBinding"),
    Resource("networking.istio.io", ("v1", "v1beta1"), "virtualservices", "VirtualService",
             short_names=("vs",), status_subresource=True),
    Resource("networking.istio.io", ("v1", "v1beta1"), "gateways", "Gateway",
             short_names=("gw",), status_subresource=True),
    Resource("gateway.networking.k8s.io", ("v1",), "httproutes", "HTTPRoute",
             status_subresource=True),
    Resource("gateway.networking.k8s.io", ("v1",), "gateways", "Gateway",
             short_names=("gtw",), status_subresource=True),
    Resource("coordination.k8s.io", ("v1",), "leases", "Lease"),
    Resource("authorization.k8s.io", ("v1",), "selfsubjectaccessreviews",
             "SelfSubjectAccessReview", namespaced=False, verbs=("create",)),
)  # fmt: skip

GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _resource in RESOURCES:
    known = GROUP_VERSIONS.setdefault(_resource.group, ())
    GROUP_VERSIONS[_resource.group] = known + tuple(v for v in _resource.versions if v not in known)


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    for resource in RESOURCES:
        if resource.group == group and resource.plural == plural and version in resource.versions:
            return resource
    return None


def resource_by_plural(plural: str) -> Resource:
    """Test-facing lookup by plural; core and apps win over CRDs of the same name."""
    for resource in RESOURCES:
        if resource.plural == plural:
            return resource
    raise KeyError(plural)


def version_document() -> JsonDict:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-hatchbot-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions_document() -> JsonDict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def api_group_list_document() -> JsonDict:
    groups = []
    for group, versions in GROUP_VERSIONS.items():
        if not group:
            continue
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list_document(group: str, version: str) -> JsonDict | None:
    if version not in GROUP_VERSIONS.get(group, ()):
        return None
    entries: list[JsonDict] = []
    for resource in RESOURCES:
        if resource.group != group or version not in resource.versions:
            continue
        entries.append(
            {
                "name": resource.plural,
                "singularName": resource.singular,
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": list(resource.verbs),
                "shortNames": list(resource.short_names),
            }
        )
        if resource.status_subresource:
            entries.append(
                _subresource(resource, "status", resource.kind, ["get", "patch", "update"])
            )
        if resource.plural == "deployments":
            entries.append(_subresource(resource, "scale", "Scale", ["get", "patch", "update"]))
        if resource.plural == "pods":
            entries.append(_subresource(resource, "log", "Pod", ["get"]))
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": entries}  # fmt: skip


def _subresource(resource: Resource, name: str, kind: str, verbs: list[str]) -> JsonDict:
    return {
        "name": f"{resource.plural}/{name}",
        "singularName": "",
        "namespaced": resource.namespaced,
        "kind": kind,
        "verbs": verbs,
    }
