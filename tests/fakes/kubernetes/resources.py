"""The API resources the fake serves, with the traits of each that the real server has."""

from __future__ import annotations

from dataclasses import dataclass

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
    # Only some kinds carry metadata.generation (Secrets, Services, ConfigMaps... do not).
    has_generation: bool = False
    # DELETE answers with the object for these, with a Status for the others.
    delete_returns_object: bool = False
    # "subdomain" (RFC 1123, most kinds), "label" (Namespace, Service) or "path" (RBAC).
    name_format: str = "subdomain"
    verbs: tuple[str, ...] = ALL_VERBS

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def preferred_version(self) -> str:
        return self.versions[0]

    @property
    def is_custom(self) -> bool:
        """Served from a CRD: no strategic merge patch, kind and apiVersion required."""
        return self.group in CUSTOM_GROUPS

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def api_version(self, version: str | None = None) -> str:
        version = version or self.preferred_version
        return f"{self.group}/{version}" if self.group else version


CUSTOM_GROUPS = frozenset({"networking.istio.io", "gateway.networking.k8s.io"})

RESOURCES: tuple[Resource, ...] = (
    Resource("", ("v1",), "namespaces", "Namespace", namespaced=False, short_names=("ns",),
             status_subresource=True, delete_returns_object=True, name_format="label"),
    Resource("", ("v1",), "secrets", "Secret"),
    Resource("", ("v1",), "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", ("v1",), "services", "Service", short_names=("svc",), status_subresource=True,
             delete_returns_object=True, name_format="label"),
    Resource("", ("v1",), "pods", "Pod", short_names=("po",), status_subresource=True,
             delete_returns_object=True),
    Resource("", ("v1",), "serviceaccounts", "ServiceAccount", short_names=("sa",),
             delete_returns_object=True),
    Resource("", ("v1",), "events", "Event", short_names=("ev",)),
    Resource("apps", ("v1",), "deployments", "Deployment", short_names=("deploy",),
             status_subresource=True, has_generation=True),
    Resource("apps", ("v1",), "replicasets", "ReplicaSet", short_names=("rs",),
             status_subresource=True, has_generation=True),
    Resource("networking.k8s.io", ("v1",), "networkpolicies", "NetworkPolicy",
             short_names=("netpol",), has_generation=True),
    Resource("rbac.authorization.k8s.io", ("v1",), "roles", "Role", name_format="path"),
    Resource("rbac.authorization.k8s.io", ("v1",), "rolebindings", "RoleBinding",
             name_format="path"),
    Resource("networking.istio.io", ("v1", "v1beta1"), "virtualservices", "VirtualService",
             short_names=("vs",), status_subresource=True, has_generation=True),
    Resource("networking.istio.io", ("v1", "v1beta1"), "gateways", "Gateway",
             short_names=("gw",), status_subresource=True, has_generation=True),
    Resource("gateway.networking.k8s.io", ("v1",), "httproutes", "HTTPRoute",
             status_subresource=True, has_generation=True),
    Resource("gateway.networking.k8s.io", ("v1",), "gateways", "Gateway",
             short_names=("gtw",), status_subresource=True, has_generation=True),
    Resource("authorization.k8s.io", ("v1",), "selfsubjectaccessreviews",
             "SelfSubjectAccessReview", namespaced=False, verbs=("create",)),
)  # fmt: skip

GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _resource in RESOURCES:
    _known = GROUP_VERSIONS.setdefault(_resource.group, ())
    GROUP_VERSIONS[_resource.group] = _known + tuple(
        v for v in _resource.versions if v not in _known
    )

_BY_PATH = {(r.group, v, r.plural): r for r in RESOURCES for v in r.versions}


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    return _BY_PATH.get((group, version, plural))


def resource_by_plural(plural: str, group: str | None = None) -> Resource:
    """Test-facing lookup by plural (`gateways` is Istio's unless `group` says otherwise)."""
    for resource in RESOURCES:
        if resource.plural == plural and group in (None, resource.group):
            return resource
    raise KeyError(f"the fake serves no resource {plural!r}")


def resource_by_kind(api_version: str, kind: str) -> Resource | None:
    group = api_version.rpartition("/")[0]
    for resource in RESOURCES:
        if resource.group == group and resource.kind == kind:
            return resource
    return None
