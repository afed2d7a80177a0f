"""The fake Kubernetes API server behaves like the real one, through the real client.

The kubernetes client is synchronous and the fake runs in its own thread, so
these tests are plain functions.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config
from kubernetes.client import ApiException

from tests.fakes.kubernetes_api import FakeKubernetes

APPLY = "application/apply-patch+yaml"
LABELS = {"app.kubernetes.io/managed-by": "hatchbot", "hatchbot.io/agent-id": "a1"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, client.ApiClient, Path]]:
    with FakeKubernetes() as fake:
        fake.put_object("namespaces", {"metadata": {"name": "agents"}})
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        api = client.ApiClient(configuration)
        yield fake, api, kubeconfig
        api.close()


def deployment(
    name: str = "agent-a1", *, image: str = "img:1", env: list[Any] | None = None
) -> dict:
    container: dict[str, Any] = {"name": "agent", "image": image}
    if env is not None:
        container["env"] = env
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"hatchbot.io/agent-id": "a1"}},
            "template": {
                "metadata": {"labels": {"hatchbot.io/agent-id": "a1"}},
                "spec": {"containers": [container]},
            },
        },
    }


def secret(name: str, labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "stringData": {"K": "v"}}


def test_create_fills_metadata_and_rejects_duplicates(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    created = core.create_namespaced_secret("agents", secret("s1"))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    assert created.data == {"K": "dg=="}  # stringData is folded into base64 data
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_secret("agents", secret("s1"))
    assert caught.value.status == 409 and "AlreadyExists" in caught.value.body
    with pytest.raises(ApiException) as missing_ns:
        core.create_namespaced_secret("nowhere", secret("s2"))
    assert missing_ns.value.status == 404
    assert core.list_namespaced_secret("nowhere").items == []  # listing there is fine
    before = core.list_namespaced_secret("agents").metadata.resource_version
    assert core.list_namespaced_secret("agents").metadata.resource_version == before


def test_get_and_delete_missing_give_404_status(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    for call in (core.read_namespaced_secret, core.delete_namespaced_secret):
        with pytest.raises(ApiException) as caught:
            call("nope", "agents")
        assert caught.value.status == 404
        assert '"reason": "NotFound"' in caught.value.body.replace('":"', '": "')


def test_label_selectors_equality_and_set_based(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    core.create_namespaced_secret("agents", secret("a", {"tier": "x", "hatchbot.io/agent-id": "1"}))
    core.create_namespaced_secret("agents", secret("b", {"tier": "y", "hatchbot.io/agent-id": "2"}))
    core.create_namespaced_secret("agents", secret("c", {"hatchbot.io/agent-id": "3"}))

    def names(selector: str) -> list[str]:
        return [
            s.metadata.name
            for s in core.list_namespaced_secret("agents", label_selector=selector).items
        ]

    assert names("tier=x") == ["a"]
    assert names("tier!=x") == ["b", "c"]
    assert names("hatchbot.io/agent-id in (1,3)") == ["a", "c"]
    assert names("hatchbot.io/agent-id notin (1)") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier,hatchbot.io/agent-id=2") == ["b"]
    listed = core.list_secret_for_all_namespaces(field_selector="metadata.name=b")
    assert [s.metadata.name for s in listed.items] == ["b"]


def test_replace_with_stale_resource_version_conflicts(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    created = core.create_namespaced_config_map(
        "agents", {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    )
    created.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("cm", "agents", created)
    assert updated.metadata.resource_version != created.metadata.resource_version
    created.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_config_map("cm", "agents", created)
    assert caught.value.status == 409 and "the object has been modified" in caught.value.body


def test_merge_and_strategic_merge_patch(server) -> None:
    _, api, _ = server
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(
        "agents", deployment(env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    )
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "agent", "env": [{"name": "B", "value": "3"}]}]}
            }
        }
    }
    patched = apps.patch_namespaced_deployment("agent-a1", "agents", patch)  # strategic by default
    env = {e.name: e.value for e in patched.spec.template.spec.containers[0].env}
    assert env == {"A": "1", "B": "3"}  # merged by name, not replaced
    assert patched.spec.template.spec.containers[0].image == "img:1"
    merged = apps.patch_namespaced_deployment(
        "agent-a1",
        "agents",
        {"metadata": {"labels": {"extra": "yes"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels["extra"] == "yes"
    assert merged.metadata.labels["hatchbot.io/agent-id"] == "a1"


def test_server_side_apply_creates_merges_and_is_idempotent(server) -> None:
    _, api, _ = server
    apps = client.AppsV1Api(api)
    first = apps.patch_namespaced_deployment(
        "agent-a1",
        "agents",
        deployment(),
        field_manager="hatchbot",
        force=True,
        _content_type=APPLY,
    )
    assert first.metadata.generation == 1
    before = apps.read_namespaced_deployment("agent-a1", "agents").metadata.resource_version
    again = apps.patch_namespaced_deployment(
        "agent-a1",
        "agents",
        deployment(),
        field_manager="hatchbot",
        force=True,
        _content_type=APPLY,
    )
    assert again.metadata.resource_version == before
    assert again.metadata.generation == 1
    changed = apps.patch_namespaced_deployment(
        "agent-a1",
        "agents",
        deployment(image="img:2"),
        field_manager="hatchbot",
        force=True,
        _content_type=APPLY,
    )
    assert changed.metadata.generation == 2
    assert changed.spec.template.spec.containers[0].image == "img:2"
    assert [m.manager for m in changed.metadata.managed_fields] == ["hatchbot"]


def test_server_side_apply_prunes_fields_the_manager_dropped(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    with_label = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}},
        "data": {"x": "1", "y": "2"},
    }
    core.patch_namespaced_config_map(
        "cm", "agents", with_label, field_manager="hatchbot", _content_type=APPLY
    )
    without = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "labels": {"a": "1"}},
        "data": {"x": "1"},
    }
    pruned = core.patch_namespaced_config_map(
        "cm", "agents", without, field_manager="hatchbot", _content_type=APPLY
    )
    assert pruned.metadata.labels == {"a": "1"}
    assert pruned.data == {"x": "1"}


def test_server_side_apply_needs_a_field_manager(server) -> None:
    _, api, _ = server
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_config_map(
            "cm", "agents", {"metadata": {"name": "cm"}}, _content_type=APPLY
        )
    assert caught.value.status == 422


def test_status_subresource_and_generation(server) -> None:
    _, api, _ = server
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("agents", deployment())
    live = apps.read_namespaced_deployment("agent-a1", "agents")
    status_patch = {"status": {"readyReplicas": 1, "replicas": 1}}
    after_status = apps.patch_namespaced_deployment_status("agent-a1", "agents", status_patch)
    assert after_status.status.ready_replicas == 1
    assert after_status.metadata.generation == live.metadata.generation
    # A main-resource write cannot change status.
    ignored = apps.patch_namespaced_deployment(
        "agent-a1",
        "agents",
        {"status": {"readyReplicas": 7}},
        _content_type="application/merge-patch+json",
    )
    assert ignored.status.ready_replicas == 1


def test_scale_subresource(server) -> None:
    fake, api, _ = server
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment("agents", deployment())
    scale = apps.patch_namespaced_deployment_scale("agent-a1", "agents", {"spec": {"replicas": 0}})
    assert scale.spec.replicas == 0
    assert fake.get_object("deployments", "agents", "agent-a1")["spec"]["replicas"] == 0
    assert apps.read_namespaced_deployment_scale("agent-a1", "agents").spec.replicas == 0


def test_pod_logs_with_tail(server) -> None:
    fake, api, _ = server
    client.AppsV1Api(api).create_namespaced_deployment("agents", deployment())
    fake.mark_ready("agents", "agent-a1")
    fake.set_pod_log("agents", "agent-a1", "one\ntwo\nthree\n")
    core = client.CoreV1Api(api)
    pod = core.list_namespaced_pod("agents", label_selector="hatchbot.io/agent-id=a1").items[0]
    assert core.read_namespaced_pod_log(pod.metadata.name, "agents", tail_lines=2) == "two\nthree\n"


def test_deleting_a_namespace_deletes_its_objects(server) -> None:
    fake, api, _ = server
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_secret("doomed", secret("s"))
    core.delete_namespace("doomed")
    assert fake.objects("secrets", "doomed") == []
    assert core.list_namespaced_secret("agents").items == []


def test_delete_collection_by_label(server) -> None:
    fake, api, _ = server
    core = client.CoreV1Api(api)
    core.create_namespaced_secret("agents", secret("a", LABELS))
    core.create_namespaced_secret("agents", secret("b"))
    core.delete_collection_namespaced_secret("agents", label_selector="hatchbot.io/agent-id=a1")
    assert [s["metadata"]["name"] for s in fake.objects("secrets", "agents")] == ["b"]


def test_custom_resources(server) -> None:
    fake, api, _ = server
    custom = client.CustomObjectsApi(api)
    route = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "agent-a1", "labels": LABELS},
        "spec": {"hosts": ["bots.example.com"], "http": []},
    }
    custom.patch_namespaced_custom_object(
        "networking.istio.io", "v1", "agents", "virtualservices", "agent-a1", route,
        field_manager="hatchbot", force=True, _content_type=APPLY,
    )  # fmt: skip
    listed = custom.list_namespaced_custom_object(
        "networking.istio.io",
        "v1",
        "agents",
        "virtualservices",
        label_selector="hatchbot.io/agent-id=a1",
    )
    assert [item["metadata"]["name"] for item in listed["items"]] == ["agent-a1"]
    assert fake.get_object("virtualservices", "agents", "agent-a1")["spec"]["hosts"] == [
        "bots.example.com"
    ]


def test_fault_injection_and_request_log(server) -> None:
    fake, api, _ = server
    core = client.CoreV1Api(api)
    fake.clear_requests()
    fake.inject_fault(status=500, verb="create", resource="secrets")
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_secret("agents", secret("s"))
    assert caught.value.status == 500
    core.create_namespaced_secret("agents", secret("s"))  # only once
    # The client retries reads on its own (urllib3), so delay more attempts than it makes.
    fake.inject_fault(status=None, delay=1.0, verb="get", resource="secrets", times=5)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_namespaced_secret("s", "agents", _request_timeout=0.2)
    verbs = [(r.verb, r.resource, r.status) for r in fake.requests]
    assert verbs[:2] == [("create", "secrets", 500), ("create", "secrets", 201)]


def test_rbac_denial_and_access_review(server) -> None:
    fake, api, _ = server
    fake.deny(verb="delete", resource="secrets")
    core = client.CoreV1Api(api)
    core.create_namespaced_secret("agents", secret("s"))
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_secret("s", "agents")
    assert caught.value.status == 403
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "spec": {
                "resourceAttributes": {
                    "verb": "delete",
                    "resource": "secrets",
                    "namespace": "agents",
                }
            }
        }
    )
    assert review.status.allowed is False


def test_kubelet_play_is_visible_through_the_client(server) -> None:
    fake, api, _ = server
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment("agents", deployment())
    fake.mark_ready("agents", "agent-a1")
    assert apps.read_namespaced_deployment("agent-a1", "agents").status.ready_replicas == 1
    fake.mark_crash_looping("agents", "agent-a1", restarts=5)
    pod = core.list_namespaced_pod("agents").items[0]
    status = pod.status.container_statuses[0]
    assert status.state.waiting.reason == "CrashLoopBackOff" and status.restart_count == 5
    assert not apps.read_namespaced_deployment("agent-a1", "agents").status.ready_replicas
    fake.mark_oom_killed("agents", "agent-a1")
    pod = core.list_namespaced_pod("agents").items[0]
    assert pod.status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
    fake.mark_image_pull_error("agents", "agent-a1")
    pod = core.list_namespaced_pod("agents").items[0]
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"


def test_auto_ready_rolls_pods_on_template_change(tmp_path: Path) -> None:
    with FakeKubernetes(auto_ready=True) as fake:
        fake.put_object("namespaces", {"metadata": {"name": "agents"}})
        fake.put_object(
            "deployments", {**deployment(), "metadata": {"name": "agent-a1", "namespace": "agents"}}
        )
        first = fake.objects("pods", "agents")
        assert len(first) == 1
        assert fake.get_object("deployments", "agents", "agent-a1")["status"]["readyReplicas"] == 1
        kubeconfig = fake.write_kubeconfig(tmp_path / "kc")
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        with client.ApiClient(configuration) as api:
            restart = {"kubectl.kubernetes.io/restartedAt": "now"}
            client.AppsV1Api(api).patch_namespaced_deployment(
                "agent-a1", "agents", {"spec": {"template": {"metadata": {"annotations": restart}}}}
            )
            second = fake.objects("pods", "agents")
            assert (
                len(second) == 1 and second[0]["metadata"]["name"] != first[0]["metadata"]["name"]
            )
            client.AppsV1Api(api).patch_namespaced_deployment_scale(
                "agent-a1", "agents", {"spec": {"replicas": 0}}
            )
            assert fake.objects("pods", "agents") == []


def test_real_kubectl_works_against_it(server, tmp_path: Path) -> None:
    fake, api, kubeconfig = server
    client.AppsV1Api(api).create_namespaced_deployment("agents", deployment())
    fake.mark_ready("agents", "agent-a1")

    def kubectl(*args: str) -> str:
        result = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "agent-a1" in kubectl("get", "deployments", "-n", "agents")
    assert "agent-a1-" in kubectl("get", "pods", "-n", "agents", "-l", "hatchbot.io/agent-id=a1")
    assert "agents" in kubectl("get", "ns")
    kubectl("get", "virtualservices", "-A")
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: agent-a1\n  namespace: agents\n"
        "spec:\n  ports:\n  - port: 80\n    targetPort: 8080\n"
    )
    # The fake serves no OpenAPI document, so kubectl's client-side validation is off.
    assert "serverside-applied" in kubectl(
        "apply", "--server-side", "--validate=false", "-f", str(manifest)
    )
    assert (
        fake.get_object("services", "agents", "agent-a1")["spec"]["ports"][0]["targetPort"] == 8080
    )


def _apply_each_kind(api: client.ApiClient, manager: str = "hatchbot") -> dict[str, dict]:
    """Server-side apply one object of every kind Hatchbot applies; the results as dicts."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    networking, custom = client.NetworkingV1Api(api), client.CustomObjectsApi(api)
    meta = {"name": "agent-a1", "labels": dict(LABELS)}
    ssa: dict[str, Any] = {"field_manager": manager, "force": True, "_content_type": APPLY}

    def apply_custom(group: str, plural: str, body: dict) -> Any:
        custom.patch_namespaced_custom_object(
            group, "v1", "agents", plural, "agent-a1", body, **ssa
        )
        # The client only decodes a 200 here; a 201 (created) reads as None, so read it back.
        return custom.get_namespaced_custom_object(group, "v1", "agents", plural, "agent-a1")

    results: dict[str, Any] = {
        "secret": core.patch_namespaced_secret(
            "agent-a1", "agents", {"apiVersion": "v1", "kind": "Secret", **secret("agent-a1")},
            **ssa,
        ),
        "deployment": apps.patch_namespaced_deployment(
            "agent-a1", "agents", deployment(env=[{"name": "A", "value": "1"}]), **ssa
        ),
        "service": core.patch_namespaced_service(
            "agent-a1", "agents",
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"selector": {"hatchbot.io/agent-id": "a1"},
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            **ssa,
        ),
        "networkpolicy": networking.patch_namespaced_network_policy(
            "agent-a1", "agents",
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
             "spec": {"podSelector": {"matchLabels": {"hatchbot.io/agent-id": "a1"}},
                      "policyTypes": ["Ingress", "Egress"]}},
            **ssa,
        ),
        "virtualservice": apply_custom(
            "networking.istio.io", "virtualservices",
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
             "spec": {"hosts": ["bots.example.com"], "http": []}},
        ),
        "httproute": apply_custom(
            "gateway.networking.k8s.io", "httproutes",
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta,
             "spec": {"hostnames": ["bots.example.com"]}},
        ),
    }  # fmt: skip
    return {kind: api.sanitize_for_serialization(obj) for kind, obj in results.items()}


def test_identical_server_side_apply_is_a_no_op_for_every_kind(server) -> None:
    fake, api, _ = server
    first = _apply_each_kind(api)
    # The deployment controller writes status after the first apply, so compare with what's stored.
    plurals = {"secret": "secrets", "deployment": "deployments", "service": "services",
               "networkpolicy": "networkpolicies", "virtualservice": "virtualservices",
               "httproute": "httproutes"}  # fmt: skip
    stored = {kind: fake.get_object(plurals[kind], "agents", "agent-a1") for kind in first}
    again = _apply_each_kind(api)
    for kind, obj in stored.items():
        assert obj is not None
        assert again[kind]["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"], (
            kind
        )
        assert again[kind]["metadata"].get("generation") == obj["metadata"].get("generation")
        assert again[kind]["metadata"]["managedFields"] == first[kind]["metadata"]["managedFields"]
    assert first["secret"]["data"] == {"K": "dg=="}


def _apply_replicas(api: client.ApiClient, manager: str, replicas: int, force: bool) -> Any:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agent-a1"},
        "spec": {"replicas": replicas},
    }
    return client.AppsV1Api(api).patch_namespaced_deployment(
        "agent-a1", "agents", body, field_manager=manager, force=force, _content_type=APPLY
    )


def test_managed_fields_record_each_managers_fields(server) -> None:
    _, api, _ = server
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment(
        "agent-a1", "agents", deployment(), field_manager="hatchbot", force=True,
        _content_type=APPLY,
    )  # fmt: skip
    labelled = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agent-a1", "labels": {"team": "ops"}},
    }
    both = apps.patch_namespaced_deployment(
        "agent-a1", "agents", labelled, field_manager="ops", _content_type=APPLY
    )
    entries = {
        e["manager"]: e for e in api.sanitize_for_serialization(both.metadata)["managedFields"]
    }
    assert set(entries) == {"hatchbot", "ops"}
    for entry in entries.values():
        assert entry["operation"] == "Apply"
        assert entry["apiVersion"] == "apps/v1"
        assert entry["fieldsType"] == "FieldsV1"
        assert entry["time"]
    assert entries["ops"]["fieldsV1"] == {"f:metadata": {"f:labels": {"f:team": {}}}}
    mine = entries["hatchbot"]["fieldsV1"]
    assert mine["f:metadata"]["f:labels"] == {
        "f:app.kubernetes.io/managed-by": {},
        "f:hatchbot.io/agent-id": {},
    }
    assert mine["f:spec"]["f:replicas"] == {}
    assert mine["f:spec"]["f:template"]["f:spec"]["f:containers"] == {
        'k:{"name":"agent"}': {".": {}, "f:name": {}, "f:image": {}}
    }
    assert both.metadata.labels == {**LABELS, "team": "ops"}
    # A manager re-applying the same value another owns shares it, without a conflict.
    shared = _apply_replicas(api, "scaler", 1, force=False)
    owners = [e.manager for e in shared.metadata.managed_fields]
    assert owners == ["hatchbot", "ops", "scaler"]


def test_conflicting_server_side_apply_needs_force(server) -> None:
    _, api, _ = server
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment(
        "agent-a1", "agents", deployment(), field_manager="hatchbot", force=True,
        _content_type=APPLY,
    )  # fmt: skip
    before = apps.read_namespaced_deployment("agent-a1", "agents").metadata.resource_version
    with pytest.raises(ApiException) as caught:
        _apply_replicas(api, "scaler", 3, force=False)
    assert caught.value.status == 409
    status = json.loads(caught.value.body)
    assert status["reason"] == "Conflict"
    assert status["details"]["causes"] == [
        {
            "type": "FieldManagerConflict",
            "message": 'conflict with "hatchbot" using apps/v1',
            "field": ".spec.replicas",
        }
    ]
    untouched = apps.read_namespaced_deployment("agent-a1", "agents")
    assert untouched.metadata.resource_version == before
    assert untouched.spec.replicas == 1

    forced = _apply_replicas(api, "scaler", 3, force=True)
    assert forced.spec.replicas == 3
    fields = {e.manager: e.fields_v1 for e in forced.metadata.managed_fields}
    assert fields["scaler"] == {"f:spec": {"f:replicas": {}}}
    assert "f:replicas" not in fields["hatchbot"]["f:spec"]
    # Now hatchbot is the one who conflicts, until it forces the field back.
    with pytest.raises(ApiException) as again:
        apps.patch_namespaced_deployment(
            "agent-a1", "agents", deployment(), field_manager="hatchbot", _content_type=APPLY
        )
    assert (
        'conflict with "scaler"' in json.loads(again.value.body)["details"]["causes"][0]["message"]
    )
    back = apps.patch_namespaced_deployment(
        "agent-a1", "agents", deployment(), field_manager="hatchbot", force=True,
        _content_type=APPLY,
    )  # fmt: skip
    assert back.spec.replicas == 1
    assert [e.manager for e in back.metadata.managed_fields] == ["hatchbot"]


def test_kubectl_server_side_apply_conflicts_and_forces(server, tmp_path: Path) -> None:
    fake, _, kubeconfig = server

    def kubectl_apply(target_port: int, *flags: str) -> subprocess.CompletedProcess[str]:
        manifest = tmp_path / "svc.yaml"
        manifest.write_text(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: agents\n"
            f"spec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: {target_port}\n"
        )
        command = ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--server-side"]
        return subprocess.run(
            [*command, "--validate=false", "-f", str(manifest), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert kubectl_apply(8080).returncode == 0
    refused = kubectl_apply(9090, "--field-manager=other")
    assert refused.returncode != 0
    assert 'conflict with "kubectl' in refused.stderr
    assert '.spec.ports[name="http"].targetPort' in refused.stderr
    assert kubectl_apply(9090, "--field-manager=other", "--force-conflicts").returncode == 0
    stored = fake.get_object("services", "agents", "web")
    assert stored is not None
    assert stored["spec"]["ports"][0]["targetPort"] == 9090
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    port = owners["other"]["f:spec"]["f:ports"]['k:{"name":"http"}']
    assert port == {".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}}
    # The forced field moved; the fields both applied with the same value stay shared.
    assert owners["kubectl"]["f:spec"]["f:ports"]['k:{"name":"http"}'] == {
        ".": {},
        "f:name": {},
        "f:port": {},
    }
