"""The validation the real server does on the objects Hatchbot writes (422 Invalid, 400).

Only rules a client bug could plausibly break: names, labels, a Deployment's
selector against its template, immutable fields, Secret data encoding,
Service ports. Unknown fields are not checked (see the package docstring).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from tests.fakes.kubernetes.errors import ApiError, bad_request, invalid
from tests.fakes.kubernetes.resources import Resource

JsonDict = dict[str, Any]
Causes = list[tuple[str, str]]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(rf"^{_LABEL}$")
DNS_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def validate(resource: Resource, obj: JsonDict, old: JsonDict | None) -> None:
    """Raise the real server's error for the first broken rule set (all causes of it)."""
    _check_secret_encoding(resource, obj)
    causes = _metadata_causes(resource, obj["metadata"])
    checker = _CHECKERS.get(resource.plural)
    if checker is not None:
        causes += checker(obj, old)
    if causes:
        raise invalid(resource.kind, resource.group, obj["metadata"].get("name", ""), causes)


def name_causes(resource: Resource, name: str) -> Causes:
    if resource.name_format == "path":
        if name in (".", "..") or "/" in name or "%" in name:
            return [("metadata.name", f"Invalid value: \"{name}\": may not contain '/' or '%'")]
        return []
    if resource.name_format == "label":
        if len(name) > 63 or not DNS_LABEL.match(name):
            return [("metadata.name", f'Invalid value: "{name}": {_LABEL_HELP}')]
        return []
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return [("metadata.name", f'Invalid value: "{name}": {_SUBDOMAIN_HELP}')]
    return []


def _metadata_causes(resource: Resource, metadata: JsonDict) -> Causes:
    causes = name_causes(resource, str(metadata.get("name", "")))
    causes += label_causes("metadata.labels", metadata.get("labels"))
    return causes


def label_causes(where: str, labels: Any) -> Causes:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [(where, "Invalid value: must be a map of strings")]
    causes: Causes = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or (
            len(name) > 63 or not _QUALIFIED_NAME.match(name)
        ):
            causes.append((where, f'Invalid value: "{key}": name part must be a valid label key'))
        if (
            not isinstance(value, str)
            or len(value) > 63
            or (value and not _QUALIFIED_NAME.match(value))
        ):
            causes.append((where, f'Invalid value: "{value}": {_VALUE_HELP}'))
    return causes


def _check_secret_encoding(resource: Resource, obj: JsonDict) -> None:
    if resource.plural != "secrets":
        return
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                f"at input byte 0 (key {key!r})"
            ) from None


def _deployment(obj: JsonDict, old: JsonDict | None) -> Causes:
    spec = obj.get("spec") or {}
    causes: Causes = []
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    expressions = (spec.get("selector") or {}).get("matchExpressions") or []
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector and not expressions:
        causes.append(("spec.selector", "Required value"))
    elif any(labels.get(k) != v for k, v in selector.items()):
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {labels}: `selector` does not match template `labels`",
            )
        )
    if int(spec.get("replicas", 1)) < 0:
        causes.append(("spec.replicas", "Invalid value: must be greater than or equal to 0"))
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate" and "rollingUpdate" in strategy:
        causes.append(
            (
                "spec.strategy.rollingUpdate",
                "Forbidden: may not be specified when strategy `type` is 'Recreate'",
            )
        )
    if old is not None and (old.get("spec") or {}).get("selector") != spec.get("selector"):
        causes.append(
            ("spec.selector", f"Invalid value: {spec.get('selector')}: field is immutable")
        )
    causes += pod_spec_causes("spec.template.spec", template.get("spec") or {})
    return causes


def pod_spec_causes(where: str, spec: JsonDict) -> Causes:
    containers = spec.get("containers") or []
    if not containers:
        return [(f"{where}.containers", "Required value")]
    causes: Causes = []
    seen: set[str] = set()
    for index, container in enumerate(containers):
        at = f"{where}.containers[{index}]"
        name = str(container.get("name", ""))
        if not name:
            causes.append((f"{at}.name", "Required value"))
        elif len(name) > 63 or not DNS_LABEL.match(name):
            causes.append((f"{at}.name", f'Invalid value: "{name}": {_LABEL_HELP}'))
        elif name in seen:
            causes.append((f"{at}.name", f'Duplicate value: "{name}"'))
        seen.add(name)
        if not container.get("image"):
            causes.append((f"{at}.image", "Required value"))
    return causes


def _pod(obj: JsonDict, old: JsonDict | None) -> Causes:
    return pod_spec_causes("spec", obj.get("spec") or {})


def _service(obj: JsonDict, old: JsonDict | None) -> Causes:
    spec = obj.get("spec") or {}
    ports = spec.get("ports") or []
    causes: Causes = []
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
        causes.append(("spec.ports", "Required value"))
    for index, port in enumerate(ports):
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(
                (
                    f"spec.ports[{index}].port",
                    f"Invalid value: {number}: must be between 1 and 65535, inclusive",
                )
            )
        if len(ports) > 1 and not port.get("name"):
            causes.append((f"spec.ports[{index}].name", "Required value"))
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        if spec.get("clusterIP") not in (before, None, ""):
            causes.append(
                (
                    "spec.clusterIPs[0]",
                    f'Invalid value: ["{spec.get("clusterIP")}"]: may not change once set',
                )
            )
    return causes


def _secret(obj: JsonDict, old: JsonDict | None) -> Causes:
    if old is not None and old.get("type") != obj.get("type"):
        return [("type", f'Invalid value: "{obj.get("type")}": field is immutable')]
    size = sum(len(str(v)) * 3 // 4 for v in (obj.get("data") or {}).values())
    if size > 1024 * 1024:
        return [("data", "Too long: must have at most 1048576 bytes")]
    return []


_CHECKERS = {
    "deployments": _deployment,
    "pods": _pod,
    "services": _service,
    "secrets": _secret,
}


def check_identity(
    resource: Resource, body: JsonDict, *, namespace: str | None, name: str | None
) -> None:
    """The 400s for a body that names another object, kind or namespace than the URL."""
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise bad_request("metadata must be an object")
    metadata = metadata or {}
    if resource.namespaced and metadata.get("namespace") not in (None, "", namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if name is not None and metadata.get("name") not in (None, "", name):
        raise bad_request(
            f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
        )
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if resource.is_custom and (not kind or not api_version):
        missing = "Kind" if not kind else "apiVersion"
        raise bad_request(f"Object '{missing}' is missing in '{_short(body)}'")
    if kind and kind != resource.kind:
        raise bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
        )
    if api_version and api_version.rpartition("/")[0] != resource.group:
        raise bad_request(
            f"the API version in the data ({api_version}) does not match the expected API group ({resource.group or 'core'})"
        )


def _short(body: JsonDict) -> str:
    text = str(body)
    return text if len(text) < 200 else text[:200] + "..."


def require_name(resource: Resource, metadata: JsonDict) -> None:
    if not metadata.get("name") and not metadata.get("generateName"):
        raise ApiError(
            422,
            f'{resource.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
            details={
                "kind": resource.kind,
                "causes": [{"reason": "FieldValueRequired", "field": "metadata.name"}],
            },
        )
