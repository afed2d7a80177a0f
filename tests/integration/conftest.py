"""Deploy-path tests run with the RBAC that `k8s/` grants the manager, enforced."""

from __future__ import annotations

import pytest

from tests.fakes.install import manager_roles
from tests.fakes.kubernetes_api import FakeKubernetes


@pytest.fixture
def kube(kube: FakeKubernetes) -> FakeKubernetes:
    """The fake API server enforcing the manager's Roles from k8s/ (the Istio install)."""
    for role in manager_roles("istio"):
        kube.grant(role)
    return kube
