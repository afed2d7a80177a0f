"""KubernetesBackend's HTTP transport: TLS, credentials and failures, against the fake API
server over real HTTP(S) on 127.0.0.1, configured as the official loaders configure it."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes import client, config

from manager_bot.backends.base import ObservedState
from manager_bot.backends.kubernetes import CONNECTIONS, KubernetesBackend, KubernetesError
from manager_bot.leader import KubeLeases
from tests.fakes.kubernetes_api import CertificateAuthority, FakeKubernetes
from tests.fakes.loopback import serve_on_loopback
from tests.fakes.waiting import until
from tests.integration.test_kubernetes_backend import cluster, spec

AGENT = "a1b2c3d4e5"  # the agent of `spec()`


def configuration_from(kubeconfig: Path) -> Any:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def backend_for(configuration: Any) -> KubernetesBackend:
    return KubernetesBackend(api_client=client.ApiClient(configuration), cluster=cluster())


def edited(kubeconfig: Path, target: Path, *, cluster: dict[str, Any] | None = None,
           drop_user: tuple[str, ...] = ()) -> Path:  # fmt: skip
    document = yaml.safe_load(kubeconfig.read_text())
    document["clusters"][0]["cluster"].update(cluster or {})
    for key in drop_user:
        del document["users"][0]["user"][key]
    target.write_text(yaml.safe_dump(document))
    return target


async def started(**options: bool) -> FakeKubernetes:
    fake = FakeKubernetes(**options)
    await fake.start()
    fake.put_object("namespaces", {"metadata": {"name": "agents"}})
    return fake


@pytest.fixture
async def secure_kube() -> AsyncIterator[FakeKubernetes]:
    """HTTPS with its own CA, and the bearer token checked on every request."""
    fake = await started(tls=True, require_token=True)
    yield fake
    await fake.stop()


@pytest.fixture
async def backends() -> AsyncIterator[list[KubernetesBackend]]:
    made: list[KubernetesBackend] = []
    yield made
    for backend in made:
        await backend.close()


async def test_over_https_with_the_kubeconfig_ca_deploys_and_observes(
    secure_kube: FakeKubernetes, tmp_path: Path, backends: list[KubernetesBackend]
) -> None:
    assert secure_kube.url.startswith("https://127.0.0.1:")
    kubeconfig = secure_kube.write_kubeconfig(tmp_path / "kubeconfig")
    backend = backend_for(configuration_from(kubeconfig))
    backends.append(backend)
    await backend.apply(spec())
    secure_kube.mark_ready("agents", f"agent-{AGENT}")
    observed = await backend.observe(AGENT)
    assert observed is not None and observed.state is ObservedState.RUNNING
    assert secure_kube.objects("secrets", "agents")[0]["metadata"]["name"] == f"agent-{AGENT}"


async def test_a_server_signed_by_another_ca_is_unreachable_and_nothing_secret_is_said(
    secure_kube: FakeKubernetes,
    tmp_path: Path,
    backends: list[KubernetesBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stranger = CertificateAuthority("somebody-else")
    kubeconfig = edited(
        secure_kube.write_kubeconfig(tmp_path / "kubeconfig"),
        tmp_path / "wrong-ca",
        cluster={"certificate-authority-data": base64.b64encode(stranger.cert_pem).decode()},
    )
    backend = backend_for(configuration_from(kubeconfig))
    backends.append(backend)
    secure_kube.clear_requests()
    with pytest.raises(KubernetesError) as caught:
        await backend.observe_all()  # list calls: their URLs carry a label selector
    assert caught.value.status == 0 and caught.value.retryable
    message = str(caught.value)
    assert message.startswith("cannot reach the Kubernetes API (")
    for secret in (secure_kube.token, "labelSelector", "managed-by", "?"):
        assert secret not in message
        assert secret not in caplog.text
    assert secure_kube.requests == []  # nothing got past the handshake


@pytest.mark.parametrize(("name", "reached"), [("localhost", True), ("kube.elsewhere", False)])
async def test_the_kubeconfig_tls_server_name_is_the_name_checked(
    secure_kube: FakeKubernetes, tmp_path: Path, backends: list[KubernetesBackend],
    name: str, reached: bool,
) -> None:  # fmt: skip
    """The fake's certificate names 127.0.0.1 and localhost: by IP, any name but those
    fails, so the call's success says which name TLS checked."""
    kubeconfig = edited(
        secure_kube.write_kubeconfig(tmp_path / "kubeconfig"),
        tmp_path / "named",
        cluster={"tls-server-name": name},
    )
    backend = backend_for(configuration_from(kubeconfig))
    backends.append(backend)
    if reached:
        assert await backend.observe(AGENT) is None
        return
    with pytest.raises(KubernetesError, match=r"\(SSLCertVerificationError\)"):
        await backend.observe(AGENT)
    assert secure_kube.requests == []  # nothing got past the handshake


async def test_a_rotated_token_is_read_again_when_the_old_one_is_refused(
    secure_kube: FakeKubernetes, tmp_path: Path, backends: list[KubernetesBackend]
) -> None:
    # As the in-cluster loader does with the service account's token file, which the
    # kubelet rewrites: the configuration's refresh hook reads the token again. The
    # backend reuses what it was given for a few seconds, and asks again on a 401.
    token_file = tmp_path / "token"
    token_file.write_text(secure_kube.token)
    configuration = configuration_from(secure_kube.write_kubeconfig(tmp_path / "kubeconfig"))

    def refresh(configuration: Any) -> None:
        configuration.api_key["BearerToken"] = f"Bearer {token_file.read_text()}"

    configuration.refresh_api_key_hook = refresh
    backend = backend_for(configuration)
    backends.append(backend)
    await backend.apply(spec())

    old = secure_kube.token
    new = secure_kube.rotate_token()
    with pytest.raises(KubernetesError) as caught:  # the file still holds the old token
        await backend.observe_all()
    assert caught.value.status == 401
    token_file.write_text(new)  # the kubelet rotates the file
    assert AGENT in await backend.observe_all()
    assert old not in str(caught.value) and new not in str(caught.value)


async def test_a_refused_token_is_a_401_that_does_not_name_it(
    secure_kube: FakeKubernetes, tmp_path: Path, backends: list[KubernetesBackend]
) -> None:
    kubeconfig = secure_kube.write_kubeconfig(tmp_path / "kubeconfig")
    stale = secure_kube.token
    secure_kube.rotate_token()
    backend = backend_for(configuration_from(kubeconfig))
    backends.append(backend)
    with pytest.raises(KubernetesError) as caught:
        await backend.apply(spec())
    assert caught.value.status == 401 and not caught.value.retryable
    assert "401 Unauthorized" in str(caught.value)
    assert stale not in str(caught.value) and secure_kube.token not in str(caught.value)
    assert secure_kube.objects("secrets", "agents") == []


async def test_a_client_certificate_from_the_kubeconfig_is_presented(
    tmp_path: Path, backends: list[KubernetesBackend]
) -> None:
    kube = await started(client_certificates=True)
    try:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        backend = backend_for(configuration_from(kubeconfig))
        backends.append(backend)
        await backend.apply(spec())
        assert AGENT in await backend.observe_all()

        anonymous = edited(
            kubeconfig,
            tmp_path / "no-certificate",
            drop_user=("client-certificate-data", "client-key-data"),
        )
        without = backend_for(configuration_from(anonymous))
        backends.append(without)
        with pytest.raises(KubernetesError) as caught:
            await without.observe_all()
        assert caught.value.status == 0
    finally:
        await kube.stop()


async def test_the_lease_is_renewed_while_every_connection_of_the_agents_calls_is_held(
    kube: FakeKubernetes, kubeconfig: Path, backends: list[KubernetesBackend]
) -> None:
    kube.put_object("namespaces", {"metadata": {"name": "hatchbot-system"}})
    backend = backend_for(configuration_from(kubeconfig))
    backends.append(backend)
    held = CONNECTIONS  # the agents' connections, all of them
    kube.inject_fault(status=None, delay=120, verb="list", resource="deployments", times=held)
    sweeps = [asyncio.create_task(backend.observe(f"agent{n:05d}")) for n in range(held)]

    def hanging() -> bool:
        waiting = [r for r in kube.requests if r.verb == "list" and r.resource == "deployments"]
        return len(waiting) >= held

    try:
        await until(hanging)
        leases = KubeLeases(backend, namespace="hatchbot-system")
        assert await leases.get() is None  # answered: its own connection, no queue
        assert not any(sweep.done() for sweep in sweeps)
    finally:
        for sweep in sweeps:
            sweep.cancel()
        await asyncio.gather(*sweeps, return_exceptions=True)
        kube.release_delayed()


class Forwarder:
    """An HTTP proxy on 127.0.0.1 in front of the fake: as a forward proxy (requests in
    absolute form) or as a gateway that serves the API under a path prefix (Rancher's
    `/k8s/clusters/<id>`). It notes what it was asked."""

    def __init__(self, target: str, *, prefix: str = "") -> None:
        self.target, self.prefix = target, prefix
        self.seen: list[tuple[str, str]] = []  # (path, Proxy-Authorization)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Forwarder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner, self.url = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        path = request.rel_url.path_qs
        self.seen.append((request.rel_url.path, request.headers.get("Proxy-Authorization", "")))
        if not path.startswith(self.prefix):
            return web.Response(status=404)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with aiohttp.ClientSession() as session, session.request(
            request.method, self.target + path[len(self.prefix):], headers=headers,
            data=await request.read(),
        ) as answer:  # fmt: skip
            body = await answer.read()
            return web.Response(status=answer.status, body=body,
                                content_type=answer.content_type)  # fmt: skip


HOP_HEADERS = {"host", "proxy-authorization", "connection", "content-length"}


async def test_a_host_with_a_path_prefix_is_joined_not_replaced(
    kube: FakeKubernetes, kubeconfig: Path, backends: list[KubernetesBackend]
) -> None:
    prefix = "/k8s/clusters/c-m-12345"
    async with Forwarder(kube.url, prefix=prefix) as gateway:
        configuration = configuration_from(kubeconfig)
        configuration.host = gateway.url + prefix
        backend = backend_for(configuration)
        backends.append(backend)
        await backend.apply(spec())
        assert AGENT in await backend.observe_all()
    assert gateway.seen and all(path.startswith(prefix + "/api") for path, _ in gateway.seen)


async def test_the_configured_proxy_is_used_with_its_headers_unless_no_proxy_says_not(
    kube: FakeKubernetes, kubeconfig: Path, backends: list[KubernetesBackend]
) -> None:
    async with Forwarder(kube.url) as proxy:
        configuration = configuration_from(kubeconfig)
        configuration.proxy = proxy.url
        configuration.proxy_headers = {"Proxy-Authorization": "Basic cHJveHk6c2VjcmV0"}
        configuration.no_proxy = "example.com"
        backend = backend_for(configuration)
        backends.append(backend)
        await backend.apply(spec())
        assert proxy.seen and {auth for _, auth in proxy.seen} == {"Basic cHJveHk6c2VjcmV0"}

        proxy.seen.clear()
        configuration = configuration_from(kubeconfig)
        configuration.proxy = proxy.url
        configuration.no_proxy = "10.0.0.0/8,127.0.0.0/8"
        direct = backend_for(configuration)
        backends.append(direct)
        assert AGENT in await direct.observe_all()
        assert proxy.seen == []


async def test_a_slow_credential_refresh_runs_off_the_event_loop(
    secure_kube: FakeKubernetes, tmp_path: Path, backends: list[KubernetesBackend]
) -> None:
    """A kubeconfig `exec` plugin (a cloud CLI's login) can take seconds. The refresh hook
    here only returns once the event loop has done something else meanwhile, which it
    could not if the hook ran on it; the call then goes through with the new token."""
    configuration = configuration_from(secure_kube.write_kubeconfig(tmp_path / "kubeconfig"))
    loop_ran = threading.Event()
    waited: list[bool] = []

    def slow_login(configuration: Any) -> None:
        waited.append(loop_ran.wait(timeout=10))
        configuration.api_key["BearerToken"] = f"Bearer {secure_kube.token}"

    configuration.refresh_api_key_hook = slow_login
    backend = backend_for(configuration)
    backends.append(backend)

    async def meanwhile() -> None:
        await asyncio.sleep(0.05)
        loop_ran.set()

    secure_kube.rotate_token()  # the kubeconfig's token is no longer good
    await asyncio.gather(backend.apply(spec()), meanwhile())
    assert waited and all(waited)
    assert secure_kube.objects("secrets", "agents")
