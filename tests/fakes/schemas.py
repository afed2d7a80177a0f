"""Validate generated objects against the official schemas.

Core Kubernetes kinds go through `kubernetes-validate` (strict: unknown fields
are errors) at the newest Kubernetes version it ships. Istio, Gateway API and
prometheus-operator objects are validated against the upstream CRDs'
`openAPIV3Schema`, copied unchanged into `tests/fakes/crds/` (Apache-2.0; see the
READMEs there) so a fresh clone tests on its own. As with kubernetes-validate's strict mode, a field a
schema does not declare is an error (the API server would silently prune it).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

JsonDict = dict[str, Any]
CRD_DIR = Path(__file__).resolve().parent / "crds"
CRD_GROUPS = ("networking.istio.io", "gateway.networking.k8s.io", "monitoring.coreos.com")


class SchemaError(AssertionError):
    """The object does not match its schema; the message says where."""


def validate(obj: JsonDict) -> None:
    """Validate any object Hatchbot generates (core kinds or routing CRDs)."""
    group = str(obj.get("apiVersion", "")).split("/")[0]
    if group in CRD_GROUPS:
        validate_crd(obj)
    else:
        validate_k8s(obj)


def validate_k8s(obj: JsonDict) -> None:
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.path)
        raise SchemaError(f"{obj.get('kind')} {where}: {error.message}") from None


def validate_crd(obj: JsonDict) -> None:
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.partition("/")
    schema = _crd_schemas().get((group, version, str(obj.get("kind"))))
    if schema is None:
        raise SchemaError(f"no CRD schema for {api_version} {obj.get('kind')}")
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path)
    )
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.path)
        raise SchemaError(f"{obj.get('kind')} {where}: {first.message}")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise SchemaError(f"{obj.get('kind')} metadata.name is required")


@functools.cache
def _crd_schemas() -> dict[tuple[str, str, str], JsonDict]:
    schemas: dict[tuple[str, str, str], JsonDict] = {}
    # prometheus-operator/: its upstream file names, unchanged (the monitoring kit's kinds).
    paths = [*CRD_DIR.glob("*.crd.yaml"), *CRD_DIR.glob("prometheus-operator/*.yaml")]
    for path in sorted(paths):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                body_schema = {
                    "type": "object",
                    "properties": {
                        k: v
                        for k, v in schema.get("properties", {}).items()
                        if k not in ("apiVersion", "kind", "metadata")
                    },
                    "required": [r for r in schema.get("required", []) if r != "metadata"],
                }
                key = (spec["group"], version["name"], spec["names"]["kind"])
                schemas[key] = _strict(body_schema)
    return schemas


def _strict(schema: Any) -> Any:
    """Reject undeclared fields, as `kubectl --validate=strict` does for CRDs."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return copy.deepcopy(result)
