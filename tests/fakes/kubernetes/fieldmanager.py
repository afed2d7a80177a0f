"""Field ownership (`metadata.managedFields`) and server-side apply.

The object's own `managedFields` (FieldsV1 tries, as the real server writes
them) are the source of truth: each entry is a manager, an operation (Apply or
Update), an optional subresource and the set of field paths it owns. Paths are
tuples of FieldsV1 elements: `f:<field>`, `k:<json keys>` for an item of a
keyed list, `v:<json value>` for an item of a set, and `.` for "the item
itself".

- An Update (create, PUT, patch) takes ownership of the fields it changed, from
  whoever had them (no conflicts for updates, as on the real server).
- An Apply owns exactly the fields of its configuration. A field another
  manager owns with a different value is a conflict (409) unless `force`,
  which takes it over. A field the same manager applied last time, no longer
  applies, and nobody else owns is removed from the object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.kubernetes.errors import ApiError
from tests.fakes.kubernetes.listtypes import ListType

JsonDict = dict[str, Any]
FieldPath = tuple[str, ...]
ListTypeOf = Callable[[tuple[str, ...]], ListType]
_MISSING: Any = object()
# Identity and bookkeeping: never owned, never applied.
_UNOWNED_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Entry:
    manager: str
    operation: str
    api_version: str
    subresource: str | None
    time: str
    paths: set[FieldPath] = field(default_factory=set)

    @property
    def identity(self) -> tuple[str, str, str | None]:
        return (self.manager, self.operation, self.subresource)

    def to_json(self) -> JsonDict:
        entry: JsonDict = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.paths),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry


# -- paths -----------------------------------------------------------------------------


def owned_fields(
    obj: JsonDict, list_type_of: ListTypeOf, *, subresource: str | None
) -> set[FieldPath]:
    """The leaf paths of `obj` a writer of the main resource (or of `/status`) sets."""
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if (key == "status") != (subresource == "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _UNOWNED_METADATA}
            if not value:
                continue
        _walk(value, (f"f:{key}",), (key,), list_type_of, paths)
    return paths


def _walk(
    value: Any,
    path: FieldPath,
    names: tuple[str, ...],
    list_type_of: ListTypeOf,
    out: set[FieldPath],
) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _walk(child, (*path, f"f:{key}"), (*names, key), list_type_of, out)
    elif isinstance(value, list) and value:
        kind = list_type_of(names)
        if kind.kind == "map":
            for item in value:
                if isinstance(item, dict):
                    item_path = (*path, item_key(item, kind.keys))
                    out.add((*item_path, "."))
                    _walk(item, item_path, names, list_type_of, out)
        elif kind.kind == "set":
            out.update((*path, "v:" + _compact(item)) for item in value)
        else:
            out.add(path)
    else:
        out.add(path)


def item_key(item: JsonDict, keys: Iterable[str]) -> str:
    return "k:" + _compact({k: item[k] for k in keys if k in item})


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def to_fields_v1(paths: Iterable[FieldPath]) -> JsonDict:
    tree: JsonDict = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return tree


def from_fields_v1(tree: JsonDict, prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for element, child in tree.items():
        path = (*prefix, element)
        if isinstance(child, dict) and child:
            paths |= from_fields_v1(child, path)
        else:
            paths.add(path)
    return paths


def value_at(obj: Any, path: FieldPath) -> Any:
    """The value a path names, or _MISSING."""
    node = obj
    for element in path:
        if element == ".":
            return node
        node = _step(node, element)
        if node is _MISSING:
            return _MISSING
    return node


def _step(node: Any, element: str) -> Any:
    kind, _, rest = element.partition(":")
    if kind == "f" and isinstance(node, dict):
        return node.get(rest, _MISSING)
    if kind == "k" and isinstance(node, list):
        wanted = json.loads(rest)
        for item in node:
            if isinstance(item, dict) and all(item.get(k) == v for k, v in wanted.items()):
                return item
    if kind == "v" and isinstance(node, list):
        wanted = json.loads(rest)
        return wanted if wanted in node else _MISSING
    return _MISSING


def remove_at(obj: JsonDict, path: FieldPath) -> None:
    """Remove what `path` names from `obj` (in place), and maps emptied by it."""
    if path and path[-1] == ".":
        path = path[:-1]
    parents: list[Any] = [obj]
    for element in path[:-1]:
        child = _step(parents[-1], element)
        if child is _MISSING:
            return
        parents.append(child)
    _remove_child(parents[-1], path[-1])
    for depth in range(len(path) - 1, 0, -1):
        container, element = parents[depth - 1], path[depth - 1]
        if parents[depth] in ({}, []) and element.startswith("f:") and isinstance(container, dict):
            container.pop(element[2:], None)
        else:
            break


def _remove_child(node: Any, element: str) -> None:
    kind, _, rest = element.partition(":")
    if kind == "f" and isinstance(node, dict):
        node.pop(rest, None)
    elif kind in ("k", "v") and isinstance(node, list):
        target = _step(node, element)
        node[:] = [
            item for item in node if item is not target and not (kind == "v" and item == target)
        ]


# -- entries ---------------------------------------------------------------------------


def read_entries(obj: JsonDict) -> list[Entry]:
    entries = []
    for raw in obj.get("metadata", {}).get("managedFields") or []:
        entries.append(
            Entry(
                manager=str(raw.get("manager", "")),
                operation=str(raw.get("operation", "Update")),
                api_version=str(raw.get("apiVersion", "")),
                subresource=raw.get("subresource") or None,
                time=str(raw.get("time", "")),
                paths=from_fields_v1(raw.get("fieldsV1") or {}),
            )
        )
    return entries


def write_entries(obj: JsonDict, entries: list[Entry], previous: list[Entry]) -> None:
    """Store the entries (dropping empty ones); an unchanged entry keeps its time."""
    before = {entry.identity: entry for entry in previous}
    kept = []
    for entry in entries:
        if not entry.paths:
            continue
        old = before.get(entry.identity)
        if old is not None and old.paths == entry.paths and old.api_version == entry.api_version:
            entry.time = old.time
        kept.append(entry.to_json())
    if kept:
        obj["metadata"]["managedFields"] = kept
    else:
        obj["metadata"].pop("managedFields", None)


def record_update(
    old: JsonDict | None,
    new: JsonDict,
    *,
    manager: str,
    api_version: str,
    subresource: str | None,
    list_type_of: ListTypeOf,
) -> None:
    """An Update by `manager`: it takes the fields it changed (in place, on `new`)."""
    previous = read_entries(old) if old is not None else []
    # A create may carry entries (put_object); later writes keep the stored ones.
    entries = [_copy(e) for e in (previous if old is not None else read_entries(new))]
    after = owned_fields(new, list_type_of, subresource=subresource)
    before = owned_fields(old, list_type_of, subresource=subresource) if old else set()
    changed = {p for p in after if old is None or value_at(old, p) != value_at(new, p)}
    removed = before - after
    for entry in entries:
        entry.paths -= changed | removed
    mine = _entry(entries, manager, "Update", subresource, api_version)
    mine.paths |= changed
    write_entries(new, entries, previous)


def apply_configuration(
    live: JsonDict | None,
    config: JsonDict,
    *,
    manager: str,
    force: bool,
    api_version: str,
    subresource: str | None,
    list_type_of: ListTypeOf,
) -> JsonDict:
    """The object after `manager` applies `config` to `live` (None: it is created)."""
    applied = owned_fields(config, list_type_of, subresource=subresource)
    previous = read_entries(live) if live is not None else []
    entries = [_copy(e) for e in previous]
    mine = _entry(entries, manager, "Apply", subresource, api_version)
    others = [e for e in entries if e is not mine]
    if live is not None:
        _resolve_conflicts(live, config, applied, others, force=force, api_version=api_version)
    result: JsonDict = _deep_copy(live) if live is not None else {"metadata": {}}
    for path in sorted(mine.paths - applied, key=len, reverse=True):
        if not _owned_by_any(path, others):
            remove_at(result, path)
    merged = merge_applied(result, _applied_part(config, subresource), (), list_type_of)
    mine.paths = applied
    mine.api_version = api_version
    write_entries(merged, entries, previous)
    return merged


def _applied_part(config: JsonDict, subresource: str | None) -> JsonDict:
    if subresource == "status":
        return {"status": config.get("status", {})}
    body = {k: v for k, v in config.items() if k not in ("apiVersion", "kind", "status")}
    metadata = {k: v for k, v in (config.get("metadata") or {}).items() if k != "managedFields"}
    body["metadata"] = metadata
    return body


def _resolve_conflicts(
    live: JsonDict,
    config: JsonDict,
    applied: set[FieldPath],
    others: list[Entry],
    *,
    force: bool,
    api_version: str,
) -> None:
    conflicts: list[tuple[Entry, FieldPath]] = []
    for entry in others:
        for path in applied & entry.paths:
            if path[-1] != "." and value_at(live, path) != value_at(config, path):
                conflicts.append((entry, path))
    if not conflicts:
        return
    if force:
        for entry, path in conflicts:
            entry.paths.discard(path)
        return
    raise _conflict_error(conflicts)


def _conflict_error(conflicts: list[tuple[Entry, FieldPath]]) -> ApiError:
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{entry.manager}" using {entry.api_version}',
            "field": dotted(path),
        }
        for entry, path in sorted(conflicts, key=lambda c: (c[0].manager, c[1]))
    ]
    lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
    count = len(causes)
    plural = "conflict" if count == 1 else "conflicts"
    return ApiError(
        409,
        f"Apply failed with {count} {plural}: {lines.removeprefix('- ') if count == 1 else lines}",
        details={"causes": causes},
    )


def dotted(path: FieldPath) -> str:
    """`.spec.replicas`, `.spec.containers[name="agent"].image`, as conflict messages say."""
    text = ""
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            text += f".{rest}"
        elif kind == "k":
            keys = json.loads(rest)
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v":
            text += f"[={rest}]"
    return text


def _owned_by_any(path: FieldPath, entries: list[Entry]) -> bool:
    prefix = path[:-1] if path[-1] == "." else path
    size = len(prefix)
    return any(
        path in entry.paths or any(p[:size] == prefix for p in entry.paths) for entry in entries
    )


def merge_applied(live: Any, config: Any, names: tuple[str, ...], list_type_of: ListTypeOf) -> Any:
    """Apply's merge: maps merge, keyed lists merge by key, sets union, the rest replaces."""
    if isinstance(config, dict):
        result = dict(live) if isinstance(live, dict) else {}
        for key, value in config.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = merge_applied(result.get(key), value, (*names, key), list_type_of)
        return result
    if isinstance(config, list) and isinstance(live, list):
        kind = list_type_of(names)
        if kind.kind == "map":
            return _merge_keyed(live, config, kind.keys, names, list_type_of)
        if kind.kind == "set":
            return live + [v for v in config if v not in live]
    return _deep_copy(config)


def _merge_keyed(
    live: list[Any],
    config: list[Any],
    keys: tuple[str, ...],
    names: tuple[str, ...],
    list_type_of: ListTypeOf,
) -> list[Any]:
    result = list(live)
    for item in config:
        if not isinstance(item, dict):
            continue
        wanted = item_key(item, keys)
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and item_key(old, keys) == wanted
            ),
            None,
        )
        if index is None:
            result.append(_deep_copy(item))
        else:
            result[index] = merge_applied(result[index], item, names, list_type_of)
    return result


def _entry(
    entries: list[Entry], manager: str, operation: str, subresource: str | None, api_version: str
) -> Entry:
    for entry in entries:
        if entry.identity == (manager, operation, subresource):
            return entry
    entry = Entry(manager, operation, api_version, subresource, now())
    entries.append(entry)
    return entry


def _copy(entry: Entry) -> Entry:
    return Entry(
        entry.manager,
        entry.operation,
        entry.api_version,
        entry.subresource,
        entry.time,
        set(entry.paths),
    )


def _deep_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))
