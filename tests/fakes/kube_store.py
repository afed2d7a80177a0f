"""The fake API server's object store and its write semantics.

Faithful to the real API server where Hatchbot relies on it: uid,
resourceVersion (one global counter), generation bumped only by spec changes,
label selectors (equality- and set-based), optimistic concurrency on replace,
JSON merge, strategic merge (lists merged by their key), JSON patch, and
server-side apply with per-manager field ownership.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.kube_resources import Resource

JsonDict = dict[str, Any]

# Lists the real server merges by a key under strategic merge patch and apply.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ports": "name",
}
_NOT_SPEC = frozenset({"metadata", "status", "apiVersion", "kind"})


class ApiError(Exception):
    """Becomes a `Status` answer."""

    def __init__(self, code: int, reason: str, message: str, details: JsonDict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> JsonDict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(resource: Resource, name: str) -> ApiError:
    qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    return ApiError(
        404,
        "NotFound",
        f'{qualified} "{name}" not found',
        {"name": name, "group": resource.group, "kind": resource.plural},
    )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- label selectors ---------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def matches_labels(labels: dict[str, str], selector: str | None) -> bool:
    """Kubernetes label selector semantics: every comma-separated term must hold."""
    if not selector:
        return True
    for term in _split_terms(selector):
        term = term.strip()
        set_term = _SET_TERM.match(term)
        if set_term:
            key, operator, raw = set_term.groups()
            values = {v.strip() for v in raw.split(",") if v.strip()}
            if operator == "in" and labels.get(key) not in values:
                return False
            if operator == "notin" and key in labels and labels[key] in values:
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(obj: JsonDict, selector: str | None) -> bool:
    if not selector:
        return True
    metadata = obj.get("metadata", {})
    for term in _split_terms(selector):
        negate = "!=" in term
        key, value = (p.strip() for p in re.split(r"!=|==|=", term, maxsplit=1))
        actual = {
            "metadata.name": metadata.get("name"),
            "metadata.namespace": metadata.get("namespace"),
        }.get(key, _dig(obj, key.split(".")))
        if (str(actual) == value) == negate:
            return False
    return True


def _dig(obj: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


# -- patches -----------------------------------------------------------------------------


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    """Like the real server for the built-in types we use: keyed lists merge by key."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            return {k: v for k, v in patch.items() if k != "$patch"}
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for name, value in patch.items():
            if name.startswith("$"):
                continue
            if value is None:
                result.pop(name, None)
            else:
                result[name] = strategic_merge_patch(result.get(name), value, name)
        return result
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        return _merge_keyed_list(target, patch, MERGE_KEYS[key])
    return copy.deepcopy(patch)


def _merge_keyed_list(target: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    fallback = "containerPort" if merge_key == "name" else merge_key
    result = copy.deepcopy(target)

    def key_of(item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        return item.get(merge_key, item.get(fallback, item.get("port")))

    for item in patch:
        index = next((i for i, old in enumerate(result) if key_of(old) == key_of(item)), None)
        if isinstance(item, dict) and item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(copy.deepcopy(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def json_patch(target: JsonDict, operations: list[JsonDict]) -> JsonDict:
    """RFC 6902 (add, remove, replace, test; enough for our callers)."""
    document = copy.deepcopy(target)
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent: Any = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        op = operation["op"]
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != operation["value"]:
                raise ApiError(422, "Invalid", "the server rejected our request: test failed")
        elif op == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        elif isinstance(parent, list):
            value = copy.deepcopy(operation["value"])
            if last == "-":
                parent.append(value)
            elif op == "add":
                parent.insert(int(last), value)
            else:
                parent[int(last)] = value
        else:
            parent[last] = copy.deepcopy(operation["value"])
    return document


# -- server-side apply -------------------------------------------------------------
#
# Ownership is a set of leaf field paths per manager. A path is a tuple of
# components: a map key, or for an element of a list the server merges by key
# (MERGE_KEYS, when every element carries the key) `k:{"name":"agent"}`, as in
# the real FieldsV1 format. Other lists are owned whole (atomic), as leaves.
# `fieldsV1` is these paths as nested maps: `f:<key>` for map keys, the `k:`
# component as is plus `".": {}` for the element itself, `{}` at leaves.

_MISSING = object()


def _element_key(list_name: str | None, items: list[Any]) -> str | None:
    merge_key = MERGE_KEYS.get(list_name or "")
    if merge_key and items and all(isinstance(i, dict) and merge_key in i for i in items):
        return merge_key
    return None


def _key_component(merge_key: str, item: JsonDict) -> str:
    return "k:" + json.dumps({merge_key: item[merge_key]}, separators=(",", ":"))


def field_paths(
    obj: Any, prefix: tuple[str, ...] = (), name: str | None = None
) -> set[tuple[str, ...]]:
    """Leaf paths of an applied configuration (keyed lists per element, others atomic)."""
    if isinstance(obj, list):
        merge_key = _element_key(name, obj)
        if merge_key is None:
            return {prefix} if prefix else set()
        paths: set[tuple[str, ...]] = set()
        for item in obj:
            paths |= field_paths(item, (*prefix, _key_component(merge_key, item)))
        return paths
    if not isinstance(obj, dict) or not obj:
        return {prefix} if prefix else set()
    paths = set()
    for key, value in obj.items():
        paths |= field_paths(value, (*prefix, key), key)
    return paths


def _step(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.startswith("k:"):
        ((key, value),) = json.loads(part[2:]).items()
        for item in node:
            if isinstance(item, dict) and item.get(key) == value:
                return item
    return _MISSING


def value_at(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = _step(obj, part)
        if obj is _MISSING:
            break
    return obj


def _remove_path(obj: JsonDict, path: tuple[str, ...]) -> None:
    if len(path) > 1 and path[-2].startswith("k:") and path[-1] in json.loads(path[-2][2:]):
        # Nobody owns the element's key any more: the element goes whole, at any depth
        # (an env entry inside a container included), as the real server removes it.
        _remove_path_only(obj, path[:-1])
        _prune_empty(obj, path[:-2])
        return
    parent = value_at(obj, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif isinstance(parent, list):
        child = _step(parent, path[-1])
        if child is not _MISSING:
            parent.remove(child)
    _prune_empty(obj, path[:-1])


def _prune_empty(obj: JsonDict, path: tuple[str, ...]) -> None:
    while path:
        if value_at(obj, path) in ({}, []):
            _remove_path_only(obj, path)
        path = path[:-1]


def _remove_path_only(obj: JsonDict, path: tuple[str, ...]) -> None:
    parent = value_at(obj, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif isinstance(parent, list):
        child = _step(parent, path[-1])
        if child is not _MISSING:
            parent.remove(child)


def fields_v1(paths: set[tuple[str, ...]]) -> JsonDict:
    """The real FieldsV1 shape of a set of owned paths."""
    tree: JsonDict = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            component = part if part.startswith("k:") else f"f:{part}"
            node = node.setdefault(component, {})
            if part.startswith("k:"):
                node.setdefault(".", {})
    return tree


def field_name(path: tuple[str, ...]) -> str:
    """`.spec.replicas`, `.spec.template.spec.containers[name="agent"].image`."""
    text = ""
    for part in path:
        if part.startswith("k:"):
            text += "".join(f"[{k}={json.dumps(v)}]" for k, v in json.loads(part[2:]).items())
        else:
            text += f".{part}"
    return text


def apply_merge(live: Any, applied: Any, key: str | None = None) -> Any:
    """Merge an applied configuration into the live object (keyed lists by key)."""
    if isinstance(applied, dict):
        result = copy.deepcopy(live) if isinstance(live, dict) else {}
        for name, value in applied.items():
            result[name] = apply_merge(result.get(name), value, name)
        return result
    if isinstance(applied, list) and key in MERGE_KEYS and isinstance(live, list):
        merged = _merge_keyed_list(live, applied, MERGE_KEYS[key])
        wanted = {str(item.get(MERGE_KEYS[key])) for item in applied if isinstance(item, dict)}
        # A keyed list is owned element by element; elements the applier no longer lists go.
        return [
            item
            for item in merged
            if not isinstance(item, dict) or str(item.get(MERGE_KEYS[key])) in wanted
        ]
    return copy.deepcopy(applied)


# -- the store -----------------------------------------------------------------------------


@dataclass
class Store:
    """Objects by resource and (namespace, name), with a global resourceVersion."""

    objects: dict[tuple[str, str], dict[tuple[str, str], JsonDict]] = field(default_factory=dict)
    # (group, plural, namespace, name) -> manager -> paths it applied last time
    managed: dict[tuple[str, str, str, str], dict[str, set[tuple[str, ...]]]] = field(
        default_factory=dict
    )
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def bucket(self, resource: Resource) -> dict[tuple[str, str], JsonDict]:
        return self.objects.setdefault((resource.group, resource.plural), {})

    def next_version(self) -> str:
        self._latest = next(self._versions)
        return str(self._latest)

    def current_version(self) -> str:
        return str(getattr(self, "_latest", 999))

    def get(self, resource: Resource, namespace: str | None, name: str) -> JsonDict | None:
        return self.bucket(resource).get((namespace or "", name))

    def require(self, resource: Resource, namespace: str | None, name: str) -> JsonDict:
        obj = self.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        return obj

    def list(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[JsonDict]:
        items = [
            obj
            for (ns, _), obj in self.bucket(resource).items()
            if (namespace is None or ns == namespace)
            and matches_labels(obj["metadata"].get("labels") or {}, label_selector)
            and matches_fields(obj, field_selector)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def create(self, resource: Resource, namespace: str | None, body: JsonDict) -> JsonDict:
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name and metadata.get("generateName"):
            name = metadata["generateName"] + uuid.uuid4().hex[:5]
            metadata["name"] = name
        if not name:
            raise ApiError(
                422, "Invalid", f"{resource.kind} is invalid: metadata.name: Required value"
            )
        if resource.namespaced:
            metadata["namespace"] = namespace or metadata.get("namespace") or "default"
        else:
            metadata.pop("namespace", None)
        key = (metadata.get("namespace", ""), name)
        if key in self.bucket(resource):
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise ApiError(
                409,
                "AlreadyExists",
                f'{qualified} "{name}" already exists',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self.next_version(),
            generation=1,
            creationTimestamp=now(),
        )
        metadata.pop("managedFields", None) if not metadata.get("managedFields") else None
        obj["apiVersion"] = obj.get("apiVersion") or resource.api_version()
        obj["kind"] = resource.kind
        _default(resource, obj)
        self.bucket(resource)[key] = obj
        return obj

    def replace_stored(
        self, resource: Resource, old: JsonDict, new: JsonDict, *, subresource: str | None = None
    ) -> JsonDict:
        """Store `new` in place of `old` with the real bookkeeping; a no-op changes nothing."""
        new = copy.deepcopy(new)
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status", {})
            new = merged
        elif resource.status_subresource:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        metadata = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in old["metadata"]:
                metadata[fixed] = old["metadata"][fixed]
        metadata["generation"] = old["metadata"].get("generation", 1)
        metadata["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["apiVersion"] = old["apiVersion"]
        new["kind"] = resource.kind
        _default(resource, new)
        if new == old:
            return old
        if _spec_of(new) != _spec_of(old):
            metadata["generation"] = metadata["generation"] + 1
        metadata["resourceVersion"] = self.next_version()
        key = (old["metadata"].get("namespace", ""), old["metadata"]["name"])
        self.bucket(resource)[key] = new
        return new

    def delete(self, resource: Resource, namespace: str | None, name: str) -> JsonDict:
        obj = self.require(resource, namespace, name)
        del self.bucket(resource)[(namespace or "", name)]
        self.managed.pop((resource.group, resource.plural, namespace or "", name), None)
        if resource.plural == "namespaces":
            for bucket in self.objects.values():
                for key in [k for k in bucket if k[0] == name]:
                    del bucket[key]
        return obj

    def apply(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        config: JsonDict,
        *,
        manager: str,
        force: bool = False,
    ) -> tuple[JsonDict, bool]:
        """Server-side apply; returns (object, created).

        Each manager owns the leaf paths it applied last. Applying a field another
        manager owns with a different value is a 409 `Conflict` unless `force`,
        which moves the field to this manager; the same value is shared ownership.
        Fields a manager stops applying are removed unless another manager owns
        them. `metadata.managedFields` mirrors the ownership; an apply that
        changes nothing changes nothing, resourceVersion included.
        """
        config = copy.deepcopy(config)
        config.setdefault("metadata", {})["name"] = name
        owner_key = (resource.group, resource.plural, namespace or "", name)
        applied = _applied_paths(resource, config)
        live = self.get(resource, namespace, name)
        if live is None:
            obj = self.create(resource, namespace, config)
            self.managed[owner_key] = {manager: applied}
            obj["metadata"]["managedFields"] = _managed_fields(
                self.managed[owner_key], obj["apiVersion"], []
            )
            return obj, True
        owners = self.managed.setdefault(owner_key, {})
        normalised = _normalised(resource, config)
        conflicts = [
            (other, path)
            for other, paths in owners.items()
            if other != manager
            for path in sorted(applied & paths)
            if value_at(live, path) is not _MISSING
            and value_at(live, path) != value_at(normalised, path)
        ]
        if conflicts and not force:
            raise _apply_conflict(resource, name, live["apiVersion"], conflicts)
        for other, path in conflicts:
            owners[other].discard(path)
        previously = owners.get(manager, set())
        others = set().union(*(p for m, p in owners.items() if m != manager)) if owners else set()
        merged = copy.deepcopy(live)
        for path in sorted(previously - applied - others, reverse=True):
            _remove_path(merged, path)
        body = {k: v for k, v in config.items() if k not in ("apiVersion", "kind", "status")}
        merged = apply_merge(merged, body)
        owners[manager] = applied
        for other in [m for m, paths in owners.items() if not paths]:
            del owners[other]
        merged["metadata"]["managedFields"] = _managed_fields(
            owners, live["apiVersion"], live["metadata"].get("managedFields") or []
        )
        return self.replace_stored(resource, live, merged), False


def _normalised(resource: Resource, config: JsonDict) -> JsonDict:
    """The applied configuration as stored: a Secret's `stringData` becomes `data`."""
    config = copy.deepcopy(config)
    if resource.plural == "secrets" and config.get("stringData"):
        data = config.setdefault("data", {})
        for key, value in config.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    return config


def _applied_paths(resource: Resource, config: JsonDict) -> set[tuple[str, ...]]:
    body = {k: v for k, v in _normalised(resource, config).items() if k not in _TYPE_FIELDS}
    return {
        path
        for path in field_paths(body)
        if path not in (("metadata", "name"), ("metadata", "namespace"))
    }


_TYPE_FIELDS = frozenset({"apiVersion", "kind", "status"})


def _managed_fields(
    owners: dict[str, set[tuple[str, ...]]], api_version: str, previous: list[JsonDict]
) -> list[JsonDict]:
    """One Apply entry per manager; an unchanged entry keeps its time."""
    before = {entry.get("manager"): entry for entry in previous}
    entries = []
    for manager, paths in owners.items():
        entry = _managed_entry(manager, api_version)
        entry["fieldsV1"] = fields_v1(paths)
        old = before.get(manager)
        if old is not None and old.get("fieldsV1") == entry["fieldsV1"]:
            entry["time"] = old.get("time", entry["time"])
        entries.append(entry)
    return entries


def _apply_conflict(
    resource: Resource, name: str, api_version: str, conflicts: list[tuple[str, tuple[str, ...]]]
) -> ApiError:
    causes = [
        {
            "type": "FieldManagerConflict",
            "message": f'conflict with "{other}" using {api_version}',
            "field": field_name(path),
        }
        for other, path in conflicts
    ]
    lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
    plural = "conflict" if len(causes) == 1 else "conflicts"
    return ApiError(
        409,
        "Conflict",
        f"Apply failed with {len(causes)} {plural}: {lines.removeprefix('- ')}"
        if len(causes) == 1
        else f"Apply failed with {len(causes)} {plural}:\n{lines}",
        {"name": name, "group": resource.group, "kind": resource.plural, "causes": causes},
    )


def _managed_entry(manager: str, api_version: str) -> JsonDict:
    return {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    }


def _spec_of(obj: JsonDict) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in _NOT_SPEC}


def _default(resource: Resource, obj: JsonDict) -> None:
    """The few defaults the real server fills that our callers read back."""
    if resource.plural == "deployments":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        obj.setdefault("status", {})
    elif resource.plural == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if string_data:
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif resource.plural == "namespaces":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        labels = obj["metadata"].setdefault("labels", {})
        labels.setdefault("kubernetes.io/metadata.name", obj["metadata"]["name"])
    elif resource.plural == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", "10.96.0." + str(sum(map(ord, obj["metadata"]["name"])) % 250))
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
