"""How each list of the kinds we serve merges: by key, as a set, or atomically.

The real server reads this from the Go types (`patchMergeKey` for strategic
merge patch, `listType`/`listMapKeys` for server-side apply). Here it is a
table for the lists Hatchbot and its tests touch; every other list, and every
list of a custom resource, is atomic (replaced whole), as on the real server
for CRDs without list-type markers.
"""

from __future__ import annotations

from dataclasses import dataclass

Path = tuple[str, ...]


@dataclass(frozen=True)
class ListType:
    kind: str  # "map", "set" or "atomic"
    keys: tuple[str, ...] = ()  # server-side apply's listMapKeys
    merge_key: str | None = None  # strategic merge patch's patchMergeKey


ATOMIC = ListType("atomic")
SET = ListType("set")


def _keyed(*keys: str, merge_key: str | None = None) -> ListType:
    return ListType("map", keys, merge_key or keys[0])


_CONTAINER_LISTS: dict[str, ListType] = {
    "env": _keyed("name"),
    "ports": _keyed("containerPort", "protocol"),
    "volumeMounts": _keyed("mountPath"),
    "volumeDevices": _keyed("devicePath"),
    "resizePolicy": _keyed("resourceName"),
}
_POD_SPEC_LISTS: dict[str, ListType] = {
    "containers": _keyed("name"),
    "initContainers": _keyed("name"),
    "ephemeralContainers": _keyed("name"),
    "volumes": _keyed("name"),
    "imagePullSecrets": _keyed("name"),
    "hostAliases": _keyed("ip"),
    "topologySpreadConstraints": _keyed("topologyKey", "whenUnsatisfiable"),
}
_COMMON: dict[Path, ListType] = {
    ("metadata", "ownerReferences"): _keyed("uid"),
    ("metadata", "finalizers"): SET,
    ("status", "conditions"): _keyed("type"),
}
_CUSTOM: dict[Path, ListType] = {
    ("metadata", "ownerReferences"): _keyed("uid"),
    ("metadata", "finalizers"): SET,
}
_BY_RESOURCE: dict[str, dict[Path, ListType]] = {
    "services": {("spec", "ports"): _keyed("port", "protocol", merge_key="port")},
}
_POD_TEMPLATE_KINDS = frozenset({"deployments", "replicasets"})
_BUILTIN_WITH_PODS = frozenset({"pods", "deployments", "replicasets"})


def list_type(plural: str, path: Path, *, custom: bool = False) -> ListType:
    """The list semantics at `path` (field names from the root, no indices)."""
    if custom:
        return _CUSTOM.get(path, ATOMIC)
    if path in _COMMON:
        return _COMMON[path]
    special = _BY_RESOURCE.get(plural, {}).get(path)
    if special is not None:
        return special
    if plural in _BUILTIN_WITH_PODS:
        pod_path = _pod_relative(plural, path)
        if pod_path is not None:
            return _pod_list_type(pod_path)
    return ATOMIC


def _pod_relative(plural: str, path: Path) -> Path | None:
    """The path inside a PodSpec, or None when `path` is not in one."""
    if plural in _POD_TEMPLATE_KINDS:
        if path[:3] != ("spec", "template", "spec"):
            return None
        return path[3:]
    if path[:1] != ("spec",):
        return None
    return path[1:]


def _pod_list_type(pod_path: Path) -> ListType:
    if len(pod_path) == 1:
        return _POD_SPEC_LISTS.get(pod_path[0], ATOMIC)
    if len(pod_path) == 2 and pod_path[0] in ("containers", "initContainers"):
        return _CONTAINER_LISTS.get(pod_path[1], ATOMIC)
    return ATOMIC
