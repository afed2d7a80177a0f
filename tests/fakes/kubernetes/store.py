"""The object store and the write semantics of the real server's generic registry.

Stored objects are never changed in place: every write stores a new dict. A
reader may therefore hold on to what it read (and serialise it outside the
lock). Every change is reported to the listeners (the controllers).
"""

from __future__ import annotations

import copy
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tests.fakes.kubernetes import fieldmanager
from tests.fakes.kubernetes.defaults import apply_defaults
from tests.fakes.kubernetes.errors import ApiError, already_exists, conflict, not_found
from tests.fakes.kubernetes.listtypes import ListType, list_type
from tests.fakes.kubernetes.resources import Resource, resource_by_plural
from tests.fakes.kubernetes.selectors import LabelTest, ObjectTest
from tests.fakes.kubernetes.validation import require_name, validate

JsonDict = dict[str, Any]
Listener = Callable[[str, Resource, JsonDict], None]
ObjectKey = tuple[Resource, str, str]
_IDENTITY = (
    "uid",
    "creationTimestamp",
    "namespace",
    "name",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
)
_NOT_SPEC = frozenset({"metadata", "status", "apiVersion", "kind"})
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class Store:
    """Objects by resource, namespace and name, with one resourceVersion counter."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.listeners: list[Listener] = []
        self._objects: dict[Resource, dict[str, dict[str, JsonDict]]] = {}
        self._dependents: dict[str, set[ObjectKey]] = {}
        self._version = 1000

    # -- reads -----------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return str(self._version)

    def get(self, resource: Resource, namespace: str | None, name: str) -> JsonDict | None:
        return self._objects.get(resource, {}).get(namespace or "", {}).get(name)

    def require(self, resource: Resource, namespace: str | None, name: str) -> JsonDict:
        obj = self.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource.group, resource.plural, name)
        return obj

    def list(
        self,
        resource: Resource,
        namespace: str | None,
        labels: LabelTest | None = None,
        fields: ObjectTest | None = None,
    ) -> list[JsonDict]:
        """In the real server's order: by namespace, then name."""
        by_namespace = self._objects.get(resource, {})
        spaces = [namespace or ""] if namespace is not None else sorted(by_namespace)
        found: list[JsonDict] = []
        for space in spaces:
            objects = by_namespace.get(space, {})
            for name in sorted(objects):
                obj = objects[name]
                if labels is not None and not labels(obj["metadata"].get("labels") or {}):
                    continue
                if fields is not None and not fields(obj):
                    continue
                found.append(obj)
        return found

    def dependents(self, owner_uid: str, resource: Resource | None = None) -> list[JsonDict]:
        """Objects whose ownerReferences name `owner_uid` (what the garbage collector sees)."""
        found = []
        for kind, namespace, name in sorted(
            self._dependents.get(owner_uid, ()), key=lambda k: (k[0].plural, k[1], k[2])
        ):
            if resource is None or kind == resource:
                obj = self.get(kind, namespace, name)
                if obj is not None:
                    found.append(obj)
        return found

    def namespace_exists(self, namespace: str) -> bool:
        return self.get(resource_by_plural("namespaces"), None, namespace) is not None

    # -- writes ------------------------------------------------------------------------

    def create(
        self,
        resource: Resource,
        namespace: str | None,
        body: JsonDict,
        *,
        manager: str,
        dry_run: bool = False,
        applied: bool = False,
    ) -> JsonDict:
        """POST semantics; `applied` when `body` comes from an apply (managedFields set)."""
        obj = copy.deepcopy(body)
        metadata = obj.setdefault("metadata", {})
        require_name(resource, metadata)
        if not metadata.get("name"):
            metadata["name"] = metadata["generateName"] + "".join(
                secrets.choice(NAME_ALPHABET) for _ in range(5)
            )
        if resource.namespaced:
            namespace = namespace or metadata.get("namespace") or "default"
            metadata["namespace"] = namespace
            if not self.namespace_exists(namespace):
                raise not_found("", "namespaces", namespace)
        else:
            metadata.pop("namespace", None)
        name = metadata["name"]
        if self.get(resource, namespace, name) is not None:
            raise already_exists(resource.group, resource.plural, name)
        for transient in ("resourceVersion", "deletionTimestamp", "generation", "selfLink"):
            metadata.pop(transient, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = fieldmanager.now()
        if resource.has_generation:
            metadata["generation"] = 1
        obj["apiVersion"] = resource.api_version()
        obj["kind"] = resource.kind
        if resource.status_subresource and resource.plural not in (
            "namespaces",
            "services",
            "pods",
        ):
            obj.pop("status", None)
            if resource.plural in ("deployments", "replicasets"):
                obj["status"] = {}
        apply_defaults(resource.plural, obj)
        validate(resource, obj, None)
        if not applied:
            self._record_update(resource, None, obj, manager=manager, subresource=None)
        if dry_run:
            return obj
        return self._store(resource, None, obj)

    def update(
        self,
        resource: Resource,
        live: JsonDict,
        candidate: JsonDict,
        *,
        manager: str,
        subresource: str | None = None,
        dry_run: bool = False,
        applied: bool = False,
    ) -> JsonDict:
        """PUT and patch semantics: `candidate` is the whole new object."""
        sent_version = (candidate.get("metadata") or {}).get("resourceVersion")
        if sent_version and sent_version != live["metadata"]["resourceVersion"]:
            raise conflict(resource.group, resource.plural, live["metadata"]["name"])
        new = self._prepared(resource, live, candidate, subresource=subresource)
        if applied:
            managed = (candidate.get("metadata") or {}).get("managedFields")
            if managed:
                new["metadata"]["managedFields"] = copy.deepcopy(managed)
            else:
                new["metadata"].pop("managedFields", None)
        else:
            self._record_update(resource, live, new, manager=manager, subresource=subresource)
        if new == live:
            return live
        if dry_run:
            return new
        if resource.has_generation and _spec_of(new) != _spec_of(live):
            new["metadata"]["generation"] = live["metadata"].get("generation", 1) + 1
        return self._store(resource, live, new)

    def delete(
        self, resource: Resource, namespace: str | None, name: str, *, orphan: bool = False
    ) -> JsonDict:
        """Delete now, then what the garbage collector (and namespace controller) would."""
        obj = self.require(resource, namespace, name)
        self._remove(resource, obj)
        if resource.plural == "namespaces":
            self._empty_namespace(name)
        self._collect_dependents(obj["metadata"]["uid"], orphan=orphan)
        return obj

    def write_status(
        self, resource: Resource, live: JsonDict, status: JsonDict, *, manager: str
    ) -> JsonDict:
        """A controller's or the kubelet's status write."""
        return self.update(
            resource, live, {**live, "status": status}, manager=manager, subresource="status"
        )

    # -- internals -----------------------------------------------------------------------

    def list_type_of(self, resource: Resource) -> Callable[[tuple[str, ...]], ListType]:
        return lambda path: list_type(resource.plural, path, custom=resource.is_custom)

    def _record_update(
        self,
        resource: Resource,
        old: JsonDict | None,
        new: JsonDict,
        *,
        manager: str,
        subresource: str | None,
    ) -> None:
        fieldmanager.record_update(
            old,
            new,
            manager=manager,
            api_version=new["apiVersion"],
            subresource=subresource,
            list_type_of=self.list_type_of(resource),
        )

    def _prepared(
        self, resource: Resource, live: JsonDict, candidate: JsonDict, *, subresource: str | None
    ) -> JsonDict:
        new = copy.deepcopy(candidate)
        if not isinstance(new.get("metadata"), dict):
            new["metadata"] = {}
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(live)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource is None and resource.status_subresource:
            new.pop("status", None)
            if "status" in live:
                new["status"] = copy.deepcopy(live["status"])
        metadata = new["metadata"]
        for key in _IDENTITY:
            if key in live["metadata"]:
                metadata[key] = live["metadata"][key]
            else:
                metadata.pop(key, None)
        metadata.pop("managedFields", None)
        if "managedFields" in live["metadata"]:
            metadata["managedFields"] = copy.deepcopy(live["metadata"]["managedFields"])
        new["apiVersion"] = live["apiVersion"]
        new["kind"] = resource.kind
        apply_defaults(resource.plural, new)
        if subresource != "status":
            validate(resource, new, live)
        return new

    def _store(self, resource: Resource, old: JsonDict | None, new: JsonDict) -> JsonDict:
        self._version += 1
        new["metadata"]["resourceVersion"] = str(self._version)
        metadata = new["metadata"]
        space = self._objects.setdefault(resource, {}).setdefault(metadata.get("namespace", ""), {})
        space[metadata["name"]] = new
        key = (resource, metadata.get("namespace", ""), metadata["name"])
        if old is not None:
            self._index_owners(key, old, add=False)
        self._index_owners(key, new, add=True)
        self._notify("ADDED" if old is None else "MODIFIED", resource, new)
        return new

    def _remove(self, resource: Resource, obj: JsonDict) -> None:
        metadata = obj["metadata"]
        namespace = metadata.get("namespace", "")
        del self._objects[resource][namespace][metadata["name"]]
        self._index_owners((resource, namespace, metadata["name"]), obj, add=False)
        self._version += 1
        self._notify("DELETED", resource, obj)

    def _index_owners(self, key: ObjectKey, obj: JsonDict, *, add: bool) -> None:
        for reference in obj["metadata"].get("ownerReferences") or []:
            uid = reference.get("uid")
            if not uid:
                continue
            if add:
                self._dependents.setdefault(uid, set()).add(key)
            else:
                self._dependents.get(uid, set()).discard(key)

    def _collect_dependents(self, uid: str, *, orphan: bool) -> None:
        for kind, namespace, name in sorted(
            self._dependents.pop(uid, set()), key=lambda k: (k[0].plural, k[1], k[2])
        ):
            dependent = self.get(kind, namespace, name)
            if dependent is None:
                continue
            if orphan:
                kept = copy.deepcopy(dependent)
                kept["metadata"]["ownerReferences"] = [
                    r for r in kept["metadata"]["ownerReferences"] if r.get("uid") != uid
                ]
                if not kept["metadata"]["ownerReferences"]:
                    del kept["metadata"]["ownerReferences"]
                self.update(kind, dependent, kept, manager="kube-controller-manager")
            else:
                self.delete(kind, namespace, name)

    def _empty_namespace(self, namespace: str) -> None:
        for resource, by_namespace in list(self._objects.items()):
            for obj in list(by_namespace.get(namespace, {}).values()):
                if self.get(resource, namespace, obj["metadata"]["name"]) is not None:
                    self._remove(resource, obj)
            by_namespace.pop(namespace, None)

    def _notify(self, event: str, resource: Resource, obj: JsonDict) -> None:
        for listener in list(self.listeners):
            listener(event, resource, obj)

    def all_objects(self) -> Iterator[tuple[Resource, JsonDict]]:
        for resource, by_namespace in self._objects.items():
            for objects in by_namespace.values():
                for obj in objects.values():
                    yield resource, obj


def _spec_of(obj: JsonDict) -> JsonDict:
    return {k: v for k, v in obj.items() if k not in _NOT_SPEC}
