"""The install manifests in `k8s/`, rendered by the real `kubectl kustomize`."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.kubernetes_api import FakeKubernetes

JsonDict = dict[str, Any]
K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
# Variant name -> kustomization directory.
VARIANTS = {"istio": K8S_DIR, "gateway-api": K8S_DIR / "gateway-api"}
MANAGER_ACCOUNT = ("hatchbot-system", "hatchbot-manager")
# The one shared Gateway each router's agents attach to, as the install kit defines it.
GATEWAYS = {
    "istio": K8S_DIR / "istio-gateway.yaml",
    "gateway-api": K8S_DIR / "gateway-api" / "gateway.yaml",
}


def install_gateway(kube: FakeKubernetes, router: str) -> None:
    """The router's Gateway from k8s/, in its namespace (made if missing)."""
    gateway = yaml.safe_load(GATEWAYS[router].read_text())
    namespace = gateway["metadata"]["namespace"]
    if kube.get_object("namespaces", None, namespace) is None:
        kube.put_object("namespaces", {"metadata": {"name": namespace}})
    kube.put_object("gateways", gateway)


@functools.cache
def _render(directory: Path) -> tuple[str, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render k8s/ (kubectl kustomize)")
    output = subprocess.run(
        [kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return tuple(yaml.safe_dump(doc) for doc in yaml.safe_load_all(output) if doc)


def rendered(variant: str) -> list[JsonDict]:
    """Every object `kubectl apply -k` would create for this routing variant."""
    return [yaml.safe_load(doc) for doc in _render(VARIANTS[variant])]


def manager_roles(variant: str) -> list[JsonDict]:
    """The Roles bound to the manager's ServiceAccount."""
    objects = rendered(variant)
    bound = {
        (binding["metadata"]["namespace"], binding["roleRef"]["name"])
        for binding in objects
        if binding["kind"] == "RoleBinding"
        and any(
            (subject.get("namespace"), subject["name"]) == MANAGER_ACCOUNT
            for subject in binding.get("subjects", [])
        )
    }
    return [
        role
        for role in objects
        if role["kind"] == "Role"
        and (role["metadata"]["namespace"], role["metadata"]["name"]) in bound
    ]


def granted(roles: list[JsonDict]) -> set[tuple[str, str, str]]:
    """(verb, group, resource) triples the Roles allow, wildcards left as they are."""
    return {
        (verb, group, resource)
        for role in roles
        for rule in role.get("rules", [])
        for verb in rule.get("verbs", [])
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }


@pytest.fixture(name="kube")
def manager_kube(kube: FakeKubernetes) -> FakeKubernetes:
    """The fake API server enforcing the manager's Roles from k8s/ (the Istio install).

    Import it into a conftest to run that directory's tests with exactly the
    rights an installed manager has.
    """
    for role in manager_roles("istio"):
        kube.grant(role)
    return kube
