"""Label and field selectors, parsed once per request and matched per object.

The grammar is the real one: comma-separated requirements (`a=b`, `a==b`,
`a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`) that must all
hold. A malformed selector is a 400, as on the real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.fakes.kubernetes.errors import ApiError

JsonDict = dict[str, Any]
LabelTest = Callable[[dict[str, str]], bool]
ObjectTest = Callable[[JsonDict], bool]

_KEY = r"(?:[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?"
_VALUE = r"(?:[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_COMPARE_TERM = re.compile(rf"^({_KEY})\s*(==|=|!=|>|<)\s*(.*)$")
_EXISTS_TERM = re.compile(rf"^(!?)\s*({_KEY})$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")

# Field selectors each kind supports besides metadata.name and metadata.namespace.
FIELD_LABELS: dict[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "secrets": frozenset({"type"}),
    "namespaces": frozenset({"status.phase"}),
    "replicasets": frozenset({"status.replicas"}),
    "events": frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
}


def split_terms(selector: str) -> list[str]:
    """Split on the commas that are not inside `( )`."""
    terms: list[str] = []
    depth, current = 0, []
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return [term for term in terms if term] if selector.strip() else []


def parse_label_selector(selector: str | None) -> LabelTest:
    """One predicate for the whole selector; an empty selector matches everything."""
    if not selector or not selector.strip():
        return _always
    tests = [_label_term(term) for term in split_terms(selector)]
    if len(tests) == 1:
        return tests[0]
    return lambda labels: all(test(labels) for test in tests)


def parse_field_selector(selector: str | None, plural: str) -> ObjectTest | None:
    """None when there is nothing to test (the cheap path for plain lists)."""
    if not selector or not selector.strip():
        return None
    supported = FIELD_LABELS.get(plural, frozenset()) | {"metadata.name", "metadata.namespace"}
    tests: list[ObjectTest] = []
    for term in split_terms(selector):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if match is None:
            raise ApiError(400, f'invalid selector: "{selector}"; can\'t understand "{term}"')
        field, operator, value = match.groups()
        if field not in supported:
            raise ApiError(400, f"field label not supported: {field}")
        tests.append(_field_test(field.split("."), operator == "!=", value))
    return lambda obj: all(test(obj) for test in tests)


def _always(labels: dict[str, str]) -> bool:
    return True


def _label_term(term: str) -> LabelTest:
    set_term = _SET_TERM.match(term)
    if set_term:
        key, operator, raw = set_term.groups()
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        _check_values(term, values)
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    exists = _EXISTS_TERM.match(term)
    if exists:
        negated, key = exists.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    compare = _COMPARE_TERM.match(term)
    if compare:
        key, operator, value = compare.groups()
        value = value.strip()
        if operator in (">", "<"):
            return _numeric_term(term, key, operator, value)
        _check_values(term, {value})
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    raise ApiError(400, f"unable to parse requirement: {term!r}")


def _numeric_term(term: str, key: str, operator: str, value: str) -> LabelTest:
    try:
        bound = int(value)
    except ValueError:
        raise ApiError(400, f"unable to parse requirement: {term!r}: not an integer") from None

    def test(labels: dict[str, str]) -> bool:
        actual = labels.get(key)
        if actual is None or not actual.lstrip("-").isdigit():
            return False
        return int(actual) > bound if operator == ">" else int(actual) < bound

    return test


def _check_values(term: str, values: set[str] | frozenset[str]) -> None:
    for value in values:
        if len(value) > 63 or not _VALUE_RE.match(value):
            raise ApiError(
                400, f"unable to parse requirement: {term!r}: invalid label value: {value!r}"
            )


def _field_test(path: list[str], negated: bool, value: str) -> ObjectTest:
    def test(obj: JsonDict) -> bool:
        actual: Any = obj
        for part in path:
            actual = actual.get(part) if isinstance(actual, dict) else None
        text = (
            ""
            if actual is None
            else str(actual).lower()
            if isinstance(actual, bool)
            else str(actual)
        )
        return (text == value) != negated

    return test
