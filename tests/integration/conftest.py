"""Deploy-path tests run with the RBAC that `k8s/` grants the manager, enforced."""

from tests.fakes.install import manager_kube  # noqa: F401 (the `kube` fixture, overridden)
