"""The three patch formats other than apply: JSON merge, strategic merge and JSON patch."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tests.fakes.kubernetes.errors import ApiError
from tests.fakes.kubernetes.listtypes import ListType, Path

JsonDict = dict[str, Any]
ListTypeOf = Callable[[Path], ListType]


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, list_type_of: ListTypeOf) -> Any:
    """Kubernetes' strategic merge: like RFC 7386, but keyed lists merge by their key.

    Supports the directives clients send: `$patch: replace|delete|merge`,
    `$retainKeys`, `$deleteFromPrimitiveList/<list>` and `$setElementOrder/<list>`
    (order is kept as it was, which is what the server does for existing items).
    """
    return _merge_object(target, patch, (), list_type_of)


def _merge_object(target: Any, patch: JsonDict, path: Path, list_type_of: ListTypeOf) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            doomed = value if isinstance(value, list) else []
            result[field] = [v for v in result.get(field) or [] if v not in doomed]
            continue
        if key.startswith("$"):
            continue
        merged = _merge_value(result.get(key), value, (*path, key), list_type_of)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_value(target: Any, value: Any, path: Path, list_type_of: ListTypeOf) -> Any:
    if value is None:
        return None
    if isinstance(value, dict):
        return _merge_object(target, value, path, list_type_of)
    if isinstance(value, list) and isinstance(target, list):
        kind = list_type_of(path)
        if kind.kind == "map" and kind.merge_key:
            return _merge_keyed_list(target, value, kind.merge_key, path, list_type_of)
        if kind.kind == "set":
            return target + [copy.deepcopy(v) for v in value if v not in target]
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_keyed_list(
    target: list[Any], patch: list[Any], key: str, path: Path, list_type_of: ListTypeOf
) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [_strip_directives(i) for i in patch if not _is_directive_item(i)]
    result = list(target)
    for item in patch:
        if not isinstance(item, dict):
            continue
        if key not in item:
            raise ApiError(400, f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = _merge_object(result[index], item, path, list_type_of)
    return result


def _is_directive_item(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


# -- RFC 6902 ------------------------------------------------------------------------


def json_patch(target: JsonDict, operations: Any) -> JsonDict:
    """RFC 6902: add, remove, replace, move, copy and test, with RFC 6901 pointers."""
    if not isinstance(operations, list):
        raise ApiError(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    document: Any = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise ApiError(400, f"invalid JSON patch operation: {operation}")
        document = _apply_operation(document, operation)
    if not isinstance(document, dict):
        raise ApiError(422, "the patched document is not an object")
    return document


def _apply_operation(document: Any, operation: JsonDict) -> Any:
    op, path = operation["op"], str(operation["path"])
    if op == "test":
        if _get(document, path) != operation.get("value"):
            raise ApiError(422, f"testing value {path} failed: test failed")
        return document
    if op == "remove":
        return _remove(document, path)
    if op in ("add", "replace"):
        if "value" not in operation:
            raise ApiError(400, f"{op} operation has no value")
        if op == "replace":
            document = _remove(document, path)
        return _add(document, path, copy.deepcopy(operation["value"]))
    if op in ("move", "copy"):
        source = str(operation.get("from", ""))
        value = copy.deepcopy(_get(document, source))
        if op == "move":
            document = _remove(document, source)
        return _add(document, path, value)
    raise ApiError(400, f"unexpected operation {op!r}")


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ApiError(400, f"JSON pointer {pointer!r} must start with /")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _get(document: Any, pointer: str) -> Any:
    value = document
    for token in _tokens(pointer):
        value = _child(value, token, pointer)
    return value


def _child(value: Any, token: str, pointer: str) -> Any:
    if isinstance(value, dict) and token in value:
        return value[token]
    if isinstance(value, list) and token.isdigit() and int(token) < len(value):
        return value[int(token)]
    raise ApiError(422, f"doc is missing path: {pointer}: missing value")


def _parent(document: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    if not tokens:
        raise ApiError(422, "cannot operate on the whole document")
    parent = document
    for token in tokens[:-1]:
        parent = _child(parent, token, pointer)
    return parent, tokens[-1]


def _remove(document: Any, pointer: str) -> Any:
    parent, last = _parent(document, pointer)
    _child(parent, last, pointer)
    if isinstance(parent, list):
        parent.pop(int(last))
    else:
        del parent[last]
    return document


def _add(document: Any, pointer: str, value: Any) -> Any:
    if pointer == "":
        return value
    parent, last = _parent(document, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise ApiError(422, f"add operation does not apply: index out of bounds: {pointer}")
        parent.insert(index, value)
    else:
        raise ApiError(422, f"add operation does not apply: doc is missing path: {pointer}")
    return document
