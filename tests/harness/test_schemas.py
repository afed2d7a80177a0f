"""The schema helper accepts valid objects and rejects broken ones of each kind."""

from __future__ import annotations

import pytest

from tests.fakes.schemas import SchemaError, validate

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"A": "b"}}
DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        },
    },
}
VIRTUAL_SERVICE = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "vs"},
    "spec": {
        "hosts": ["bots.example.com"],
        "gateways": ["hatchbot-system/hatchbot-gateway"],
        "http": [
            {
                "match": [{"uri": {"exact": "/webhook/a1"}}],
                "route": [{"destination": {"host": "agent-a1", "port": {"number": 80}}}],
            }
        ],
    },
}
HTTP_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "r"},
    "spec": {
        "parentRefs": [{"name": "hatchbot-gateway", "namespace": "hatchbot-system"}],
        "hostnames": ["bots.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "Exact", "value": "/webhook/a1"}}],
                "backendRefs": [{"name": "agent-a1", "port": 80}],
            }
        ],
    },
}


@pytest.mark.parametrize("obj", [SECRET, DEPLOYMENT, VIRTUAL_SERVICE, HTTP_ROUTE])
def test_valid_objects_pass(obj: dict) -> None:
    validate(obj)


def broken(obj: dict, *path: str, value: object) -> dict:
    import copy

    result = copy.deepcopy(obj)
    target = result
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return result


@pytest.mark.parametrize(
    "obj",
    [
        broken(SECRET, "stringDatas", value={"A": "b"}),  # unknown field
        broken(DEPLOYMENT, "spec", "replicas", value="one"),  # wrong type
        broken(
            DEPLOYMENT, "spec", "template", "spec", "containers", value=[{"name": "c", "imag": "i"}]
        ),
        broken(VIRTUAL_SERVICE, "spec", "hosts", value="bots.example.com"),
        broken(VIRTUAL_SERVICE, "spec", "htp", value=[]),
        broken(
            HTTP_ROUTE,
            "spec",
            "rules",
            value=[{"matches": [{"path": {"type": "Regexp!", "value": "/x"}}]}],
        ),
        {**VIRTUAL_SERVICE, "apiVersion": "networking.istio.io/v9"},
    ],
)
def test_broken_objects_fail(obj: dict) -> None:
    with pytest.raises(SchemaError):
        validate(obj)
