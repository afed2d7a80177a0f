"""What a container really receives: the kubelet's env, `$(VAR)` expansion and mounted files.

Tests that must check what a pod sees (not what its manifest says) run the manifest
through this emulator. It once mattered: a user's system prompt containing
`$(LLM_API_KEY)` was expanded by the kubelet into the platform's key.

Ported from Kubernetes, not guessed:
- `expand`: third_party/forked/golang/expansion/expand.go (MappingFuncFor + Expand);
- `container_env`: pkg/kubelet/kubelet_pods.go makeEnvironmentVariables;
- `mounted_files`: pkg/volume/{secret,configmap} MakePayload and the kubelet's subPath mounts;
- `command_line`: pkg/kubelet/container/helpers.go ExpandContainerCommandAndArgs.

Anything the emulator cannot answer exactly (fieldRef, subPathExpr) raises
NotImplementedError rather than returning a plausible guess.
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections import ChainMap
from collections.abc import Mapping, Sequence
from typing import Any

# Kubelets before v1.30 skipped envFrom keys failing this (with an InvalidEnvironmentVariableNames
# event); kubernetes/kubernetes#123385 removed the check, so v1.30+ pass every key through.
_LEGACY_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class ContainerConfigError(Exception):
    """A reference the kubelet cannot resolve: the container stays in CreateContainerConfigError."""


class VolumeMountError(ContainerConfigError):
    """A volume the kubelet cannot populate: the pod stays ContainerCreating with FailedMount."""


def expand(value: str, lookup: Mapping[str, str]) -> str:
    """Expand `$(NAME)` references exactly as the kubelet does.

    `$$` is an escaped `$`; `$(NAME)` with NAME unknown is written back unchanged; any
    other `$x` and a final `$` stay as written. `$(` scans to the *first* later `)`, so a
    stray `$(` swallows everything up to it: `$( $(KEY)` looks up the name ` $(KEY` and
    stays literal. Only a `$(` with no `)` anywhere after it is kept as an incomplete
    reference, and scanning resumes right after its `(`.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(value):
        if value[cursor] == "$" and cursor + 1 < len(value):
            out.append(value[checkpoint:cursor])
            following = value[cursor + 1]
            closer = value.find(")", cursor + 2) if following == "(" else -1
            if following == "$":
                out.append("$")
                cursor += 1
            elif closer != -1:
                name = value[cursor + 2 : closer]
                out.append(lookup.get(name, f"$({name})"))
                cursor = closer
            else:
                # Upstream wrote `string(input[0])` here, a single byte, which mangled `$`
                # before a multi-byte character until kubernetes/kubernetes#136325; this
                # is the fixed behaviour: the character is kept as written.
                out.append("$" + following)
                cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    out.append(value[checkpoint:])
    return "".join(out)


def secret_strings(obj: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's or ConfigMap's data as the kubelet reads it.

    For a Secret, base64 `data` merged with plain `stringData`, stringData winning as the
    API server does on write. For a ConfigMap (`kind: ConfigMap`), its plain `data`; its
    `binaryData` never reaches env and is not modelled for files either.
    """
    if obj.get("kind") == "ConfigMap":
        return dict(obj.get("data") or {})
    strings = {
        key: base64.b64decode(encoded, validate=True).decode("utf-8", "surrogateescape")
        for key, encoded in (obj.get("data") or {}).items()
    }
    strings.update(obj.get("stringData") or {})
    return strings


def _source(
    kind: str, ref: Mapping[str, Any], sources: Mapping[str, Mapping[str, str]]
) -> Mapping[str, str] | None:
    """The named Secret/ConfigMap, None if it is missing but optional."""
    found = sources.get(ref["name"])
    if found is None and not ref.get("optional"):
        raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    return found


def container_env(
    container: Mapping[str, Any],
    *,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
    service_env: Mapping[str, str] | None = None,
    skip_invalid_names: bool = False,
) -> dict[str, str]:
    """The container's final environment, built in the kubelet's order.

    1. every `envFrom` source in order, later sources overriding earlier ones;
    2. every `env` entry in order: a literal `value` is expanded against the variables
       defined so far (then `service_env`), so a reference to a *later* entry stays
       literal; `secretKeyRef`/`configMapKeyRef` values are taken verbatim, never expanded;
    3. `service_env` entries not already defined.

    `service_env` is what the kubelet injects from Services: even with enableServiceLinks
    false, the `KUBERNETES_SERVICE_*` variables of default/kubernetes are always present.
    `skip_invalid_names` emulates a kubelet older than v1.30 (see `_LEGACY_ENV_NAME`).
    """
    services = service_env or {}
    env: dict[str, str] = {}
    for env_from in container.get("envFrom") or []:
        kind, ref, sources = (
            ("Secret", env_from["secretRef"], secrets)
            if "secretRef" in env_from
            else ("ConfigMap", env_from["configMapRef"], config_maps)
        )
        data = _source(kind, ref, sources) or {}
        for key, value in data.items():
            name = env_from.get("prefix", "") + key
            if skip_invalid_names and not _LEGACY_ENV_NAME.fullmatch(name):
                continue
            env[name] = value
    lookup = ChainMap(env, dict(services))  # live view: later entries see earlier ones
    for entry in container.get("env") or []:
        literal = entry.get("value") or ""
        value_from = entry.get("valueFrom")
        if literal or not value_from:
            env[entry["name"]] = expand(literal, lookup)
            continue
        if "secretKeyRef" in value_from:
            kind, ref, sources = "Secret", value_from["secretKeyRef"], secrets
        elif "configMapKeyRef" in value_from:
            kind, ref, sources = "ConfigMap", value_from["configMapKeyRef"], config_maps
        else:
            raise NotImplementedError(f"valueFrom {sorted(value_from)} is not emulated")
        referenced = _source(kind, ref, sources)
        if referenced is None:
            continue  # optional and missing: the variable is simply not set
        if ref["key"] not in referenced:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
        env[entry["name"]] = referenced[ref["key"]]
    return {**env, **{name: value for name, value in services.items() if name not in env}}


def _volume_payload(
    volume: Mapping[str, Any],
    *,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
) -> dict[str, str] | None:
    """Relative path -> content of a secret/configMap volume; None for other volume types."""
    if "secret" in volume:
        source, name, pool = volume["secret"], volume["secret"].get("secretName"), secrets
    elif "configMap" in volume:
        source, name, pool = volume["configMap"], volume["configMap"].get("name"), config_maps
    else:
        return None
    optional = bool(source.get("optional"))
    data = pool.get(name or "")
    if data is None:
        if not optional:
            raise VolumeMountError(f'volume "{volume["name"]}": "{name}" not found')
        data = {}
    items = source.get("items") or []
    if not items:
        return dict(data)
    payload: dict[str, str] = {}
    for item in items:
        if item["key"] in data:
            payload[item["path"]] = data[item["key"]]
        elif not optional:
            raise VolumeMountError(f"references non-existent key: {item['key']}")
    return payload


def mounted_files(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """Absolute path -> content of every file the container sees from secret/configMap volumes.

    Contents are literal (no expansion). A `subPath` naming a file mounts that file at
    `mountPath`; naming a directory mounts what is under it; naming nothing mounts an
    empty directory (the kubelet creates it). Like containerd, parents are mounted before
    children, and every mount (any volume type) hides what was at or under its path.
    """
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes") or []}
    mounts = sorted(
        container.get("volumeMounts") or [],
        key=lambda mount: len(posixpath.normpath(mount["mountPath"]).split("/")),
    )
    files: dict[str, str] = {}
    for mount in mounts:
        if mount.get("subPathExpr"):
            raise NotImplementedError("subPathExpr is not emulated")
        target = posixpath.normpath(mount["mountPath"])
        for path in [p for p in files if p == target or p.startswith(target.rstrip("/") + "/")]:
            del files[path]
        payload = _volume_payload(volumes[mount["name"]], secrets=secrets, config_maps=config_maps)
        sub_path = posixpath.normpath(mount["subPath"]) if mount.get("subPath") else ""
        for relative, content in (payload or {}).items():
            relative = posixpath.normpath(relative)
            if not sub_path:
                files[posixpath.join(target, relative)] = content
            elif relative == sub_path:
                files[target] = content
            elif relative.startswith(sub_path + "/"):
                files[posixpath.join(target, relative[len(sub_path) + 1 :])] = content
    return files


def command_line(
    container: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
) -> list[str]:
    """The argv the container starts with, as the container runtime builds it.

    `command` replaces the image's ENTRYPOINT and drops its CMD; `args` replaces CMD.
    Both `command` and `args` are expanded against the final env, as the kubelet does;
    the image's own ENTRYPOINT and CMD are not.
    """
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    if command:
        return command + args
    return list(entrypoint) + (args or list(cmd))
