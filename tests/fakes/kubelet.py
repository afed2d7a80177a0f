"""A fake kubelet (and deployment controller): the fake cluster runs what its Deployments say.

For every Deployment with replicas > 0 it keeps that many pods, each one a real
process started from the image contract (tests/fakes/image.py: ENTRYPOINT and CMD,
WORKDIR, USER and ENV of the Dockerfile's final stage, with the container's
`command`/`args`) in a read-only copy of the code. Like the real ones:
- the environment is resolved by tests/fakes/kubelet_env.py (envFrom, `$(VAR)`,
  `$$`, secretKeyRef, the always-present KUBERNETES_SERVICE_* variables); a missing
  Secret leaves the container in CreateContainerConfigError, a missing volume in
  ContainerCreating; mounted Secret/ConfigMap files are written as mounted;
- readiness and liveness probes run per their specs (httpGet path, named port,
  initialDelaySeconds, periodSeconds, timeoutSeconds, success/failure thresholds);
  a failed liveness probe restarts the container;
- an exited container is restarted after a back-off (CrashLoopBackOff meanwhile),
  with restartCount and the last termination's reason (Completed, Error, OOMKilled);
- a template change rolls out per the Deployment's strategy (Recreate: the old pods
  end before new ones start; RollingUpdate: maxSurge/maxUnavailable); scaling to
  zero or deleting the Deployment ends the processes (SIGTERM, then SIGKILL after
  terminationGracePeriodSeconds); `pods/log` serves what the process printed.
Tests can still force an OOM kill (`oom_kill`) or an image nobody can pull
(`unpullable`).

What differs from a node, and why:
- The pod's network namespace is a loopback address per pod (127.1.x.y); a bind to
  0.0.0.0 becomes a bind to it (tests/fakes/pod_sandbox.py).
- The pod's filesystem is the host's: mounts are written under the pod's own
  directory, and an env value naming a path under a mount is mapped there.
- The image's /opt/venv is this machine's site-packages (PYTHONPATH).
- Back-off is 0.5 s doubling to 8 s, not 10 s to 5 min: tests wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import math
import posixpath
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.image import (
    ImageContract,
    copy_app,
    image_contract,
    interpreter_for,
    site_packages,
)
from tests.fakes.kube_resources import resource_by_plural
from tests.fakes.kube_store import now
from tests.fakes.kubelet_env import (
    ContainerConfigError,
    VolumeMountError,
    command_line,
    container_env,
    mounted_files,
    secret_strings,
)
from tests.fakes.kubernetes_api import FakeKubernetes, template_hash

JsonDict = dict[str, Any]
SANDBOX = Path(__file__).with_name("pod_sandbox.py")
# The kubelet always injects the API server's Service, even with enableServiceLinks false.
SERVICE_ENV = {
    "KUBERNETES_SERVICE_HOST": "10.96.0.1",
    "KUBERNETES_SERVICE_PORT": "443",
    "KUBERNETES_SERVICE_PORT_HTTPS": "443",
    "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
    "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_443_TCP_PORT": "443",
    "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
}
PODS = resource_by_plural("pods")
DEPLOYMENTS = resource_by_plural("deployments")


@dataclass
class _Probe:
    """One probe's spec with the API's defaults."""

    path: str
    port: int
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None, ports: Mapping[str, int]) -> _Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        get = spec["httpGet"]
        port = get["port"]
        return cls(
            path=get.get("path", "/"),
            port=ports[port] if isinstance(port, str) else int(port),
            initial_delay=spec.get("initialDelaySeconds", 0),
            period=spec.get("periodSeconds", 10),
            timeout=spec.get("timeoutSeconds", 1),
            success_threshold=spec.get("successThreshold", 1),
            failure_threshold=spec.get("failureThreshold", 3),
        )


@dataclass
class _Pod:
    """What the kubelet knows of one pod it runs."""

    namespace: str
    name: str
    ip: str
    directory: Path
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    terminating: bool = False
    ready: bool = False
    restarts: int = 0
    oom: bool = False
    last_terminated: JsonDict | None = None
    waiting: str | None = "ContainerCreating"
    started_at: str | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def log_file(self) -> Path:
        return self.directory / "container.log"


class FakeKubelet:
    """Runs the Deployments of a FakeKubernetes. `async with FakeKubelet(kube):`."""

    def __init__(
        self, kube: FakeKubernetes, *, sync_interval: float = 0.05,
        backoff: tuple[float, float] = (0.5, 8.0),
    ) -> None:  # fmt: skip
        self.kube = kube
        self.sync_interval = sync_interval
        self.backoff = backoff
        self.unpullable: set[str] = set()  # images whose pull fails (ImagePullBackOff)
        self.started = 0  # containers started, restarts included
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._ips = (f"127.1.{n // 250}.{n % 250 + 1}" for n in itertools.count())
        self._root = Path(tempfile.mkdtemp(prefix="hatchbot-node-"))
        self._image: ImageContract = image_contract()
        self._app = Path()
        self._sandbox = Path()
        self._python, self._as_user = "", dict[str, Any]()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._root.chmod(0o755)
        self._app = copy_app(self._image, self._root / "app")
        self._sandbox = self._root / "pod_sandbox.py"
        shutil.copy(SANDBOX, self._sandbox)
        self._sandbox.chmod(0o444)
        self._python, self._as_user = await asyncio.to_thread(
            interpreter_for, self._image.uid, self._image.gid, site_packages()
        )
        self._http = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()

        def wake() -> None:  # called from the API server's thread
            loop.call_soon_threadsafe(self._wake.set)

        self.kube.attach_kubelet(on_change=wake, logs=self._read_log)
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for pod in list(self._pods.values()):
            self._begin_end(pod, grace=2)
        await asyncio.gather(*(pod.task for pod in list(self._pods.values()) if pod.task))
        self.kube.detach_kubelet()
        if self._http is not None:
            await self._http.close()
        shutil.rmtree(self._root, ignore_errors=True)

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- test-facing -----------------------------------------------------------------

    def pod_ip(self, namespace: str, name: str) -> str | None:
        pod = self._pods.get((namespace, name))
        return pod.ip if pod else None

    def processes(self, namespace: str | None = None) -> list[asyncio.subprocess.Process]:
        """The containers' processes now running (in `namespace`)."""
        return [
            pod.process
            for pod in self._pods.values()
            if pod.process is not None
            and pod.process.returncode is None
            and namespace in (None, pod.namespace)
        ]

    def oom_kill(self, namespace: str, deployment: str) -> int:
        """The kernel kills the deployment's containers for exceeding their memory limit."""
        killed = 0
        for pod in self._pods.values():
            mine = pod.namespace == namespace and pod.name.startswith(f"{deployment}-")
            if mine and pod.process is not None and pod.process.returncode is None:
                pod.oom = True
                pod.process.kill()
                killed += 1
        return killed

    # -- the control loop ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._sync()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sync_interval)

    def _sync(self) -> None:
        with self.kube.lock:
            store = self.kube.store
            deployments = list(store.bucket(DEPLOYMENTS).values())
            live_pods = dict(store.bucket(PODS))
            for deployment in deployments:
                self._control(deployment, live_pods)
            still = store.bucket(PODS)
            for key, pod in list(self._pods.items()):
                if key not in still and not pod.terminating:
                    # Deleted through the API, or with its Deployment.
                    self._begin_end(pod, grace=self._grace(None))
            for deployment in deployments:
                self._write_deployment_status(deployment)

    def _control(self, deployment: JsonDict, live_pods: Mapping[tuple[str, str], JsonDict]) -> None:
        """The deployment controller: the pods a Deployment's spec asks for, per its strategy."""
        spec = deployment.get("spec", {})
        replicas = spec.get("replicas", 1)
        wanted = template_hash(deployment)
        owned = [pod for pod in live_pods.values() if _owned_by(pod, deployment)]
        ending = [p for p in owned if (known := self._known(p)) is not None and known.terminating]
        running = [p for p in owned if p not in ending]
        new = [p for p in running if p["metadata"]["labels"].get("pod-template-hash") == wanted]
        old = [p for p in running if p not in new]
        strategy = spec.get("strategy", {})
        if strategy.get("type") == "Recreate":
            if old:
                for pod in old:
                    self._terminate(pod)
                return
            if ending:
                return  # Recreate: no new pod while an old one is still ending
            surge, unavailable = 0, replicas
        else:
            rolling = strategy.get("rollingUpdate", {})
            surge = _scaled(rolling.get("maxSurge", "25%"), replicas, up=True)
            unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, up=False)
            if surge == 0 and unavailable == 0:
                surge = 1
        for _ in range(min(replicas - len(new), replicas + surge - len(running))):
            new.append(self._create_pod(deployment, wanted))
        ready = sum(self._is_ready(p) for p in new + old)
        for pod in sorted(old, key=self._is_ready):
            if ready - self._is_ready(pod) < replicas - unavailable:
                break
            ready -= self._is_ready(pod)
            self._terminate(pod)
        for pod in sorted(new, key=self._is_ready)[: max(0, len(new) - replicas)]:
            self._terminate(pod)

    def _known(self, pod: JsonDict) -> _Pod | None:
        return self._pods.get((pod["metadata"]["namespace"], pod["metadata"]["name"]))

    def _is_ready(self, pod: JsonDict) -> int:
        known = self._known(pod)
        return int(known is not None and known.ready and not known.terminating)

    def _create_pod(self, deployment: JsonDict, wanted: str) -> JsonDict:
        metadata = deployment["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        template = deployment.get("spec", {}).get("template", {})
        pod_name = f"{name}-{wanted}-{secrets.token_hex(3)[:5]}"
        pod = _Pod(namespace, pod_name, next(self._ips), self._root / namespace / pod_name)
        created = self.kube.store.create(
            PODS,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "labels": {
                        **template.get("metadata", {}).get("labels", {}),
                        "pod-template-hash": wanted,
                    },
                    "annotations": dict(template.get("metadata", {}).get("annotations", {})),
                    "ownerReferences": [_owner(deployment)],
                },
                "spec": {**copy.deepcopy(template.get("spec", {})), "nodeName": "fake-node"},
            },
        )
        self._pods[(namespace, pod_name)] = pod
        self._write_pod_status(pod)
        pod.task = asyncio.create_task(self._keep_running(pod))
        return created

    def _terminate(self, pod_object: JsonDict) -> None:
        pod = self._known(pod_object)
        if pod is None or pod.terminating:
            return
        live = self.kube.store.get(PODS, pod.namespace, pod.name)
        if live is not None:
            marked = copy.deepcopy(live)
            marked["metadata"]["deletionTimestamp"] = now()
            self.kube.store.replace_stored(PODS, live, marked)
        self._begin_end(pod, grace=self._grace(pod_object))

    def _begin_end(self, pod: _Pod, *, grace: float) -> None:
        pod.terminating, pod.ready = True, False
        pod.task = asyncio.create_task(self._end(pod, grace=grace, running=pod.task))

    def _grace(self, pod_object: JsonDict | None) -> float:
        if pod_object is None:
            return 30.0
        return float(pod_object.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    async def _end(self, pod: _Pod, *, grace: float, running: asyncio.Task[None] | None) -> None:
        """SIGTERM, SIGKILL after the grace period, then the pod object goes."""
        if running is not None and not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running
        await _stop_process(pod.process, grace)
        with self.kube.lock:
            if self.kube.store.get(PODS, pod.namespace, pod.name) is not None:
                self.kube.store.delete(PODS, pod.namespace, pod.name)
            self._pods.pop((pod.namespace, pod.name), None)
        self._wake.set()

    # -- one pod ---------------------------------------------------------------------

    async def _keep_running(self, pod: _Pod) -> None:
        """Start the container, probe it, restart it after a back-off when it exits."""
        delay = self.backoff[0]
        while not pod.terminating:
            spec = self._pod_spec(pod)
            if spec is None:
                return
            container = spec["containers"][0]
            if container.get("image") in self.unpullable:
                self._set_waiting(pod, "ErrImagePull" if not pod.waiting else "ImagePullBackOff")
                await asyncio.sleep(delay)
                continue
            try:
                argv, env = self._prepare(pod, spec, container)
            except VolumeMountError:
                self._set_waiting(pod, "ContainerCreating")
                await asyncio.sleep(self.sync_interval * 4)
                continue
            except ContainerConfigError:
                self._set_waiting(pod, "CreateContainerConfigError")
                await asyncio.sleep(self.sync_interval * 4)
                continue
            began = time.monotonic()
            exit_code = await self._run_container(pod, container, argv, env)
            reason = "OOMKilled" if pod.oom else ("Completed" if exit_code == 0 else "Error")
            pod.last_terminated = {"reason": reason, "exitCode": 137 if pod.oom else exit_code,
                                   "finishedAt": now()}  # fmt: skip
            pod.oom = False
            pod.restarts += 1
            if time.monotonic() - began > 10 * self.backoff[1]:
                delay = self.backoff[0]  # ran long enough: the back-off starts over
            self._set_waiting(pod, "CrashLoopBackOff")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    def _pod_spec(self, pod: _Pod) -> JsonDict | None:
        with self.kube.lock:
            live = self.kube.store.get(PODS, pod.namespace, pod.name)
            return copy.deepcopy(live["spec"]) if live is not None else None

    def _prepare(
        self, pod: _Pod, spec: JsonDict, container: JsonDict
    ) -> tuple[list[str], dict[str, str]]:
        """argv and environment, as the kubelet and the container runtime make them."""
        with self.kube.lock:
            secrets_ = {
                name: secret_strings(obj)
                for (ns, name), obj in self.kube.store.bucket(resource_by_plural("secrets")).items()
                if ns == pod.namespace
            }
            config_maps = {
                name: dict(obj.get("data") or {})
                for (ns, name), obj in self.kube.store.bucket(
                    resource_by_plural("configmaps")
                ).items()
                if ns == pod.namespace
            }
        # Volumes first: the kubelet creates no container before its volumes are mounted.
        files = mounted_files(spec, container, secrets=secrets_, config_maps=config_maps)
        resolved = container_env(
            container, secrets=secrets_, config_maps=config_maps, service_env=SERVICE_ENV
        )
        root = pod.directory / "root"
        if root.exists():
            shutil.rmtree(root)
        mounts = [posixpath.normpath(m["mountPath"]) for m in container.get("volumeMounts") or []]
        for mount in mounts:
            (root / mount.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for path, content in files.items():
            local = root / path.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(content, encoding="utf-8", newline="")
            local.chmod(0o444)
        for directory in [pod.directory, root, *[p for p in root.rglob("*") if p.is_dir()]]:
            directory.chmod(0o755)
        for mount in mounts:  # emptyDir and the like: writable by the container's user
            (root / mount.lstrip("/")).chmod(0o777 if mount not in files else 0o755)
        argv = command_line(
            container, resolved, entrypoint=self._image.entrypoint, cmd=self._image.cmd
        )
        env = {
            **{k: v for k, v in self._image.env.items() if k != "PATH"},
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": pod.name,
            "HOME": str(pod.directory),
            "PYTHONPATH": site_packages(),
            **{key: _mapped(value, mounts, root) for key, value in resolved.items()},
        }
        return argv, env

    async def _run_container(
        self, pod: _Pod, container: JsonDict, argv: list[str], env: dict[str, str]
    ) -> int:
        if argv[0] not in ("python", "python3"):
            raise NotImplementedError(f"the fake node runs Python images only, not {argv[0]!r}")
        pod.directory.mkdir(parents=True, exist_ok=True)
        with pod.log_file.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                self._python, str(self._sandbox), pod.ip, *argv[1:],
                cwd=self._app, env=env, stdout=sink, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, **self._as_user,
            )  # fmt: skip
        pod.process = process
        self.started += 1
        pod.waiting, pod.ready, pod.started_at = None, False, now()
        self._write_pod_status(pod)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        probes = [
            asyncio.create_task(self._probe(pod, probe, liveness=kind == "livenessProbe"))
            for kind in ("readinessProbe", "livenessProbe")
            if (probe := _Probe.of(container.get(kind), ports)) is not None
        ]
        if "readinessProbe" not in container:
            pod.ready = True
            self._write_pod_status(pod)
        try:
            return await process.wait()
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            pod.ready = False
            if not pod.terminating:
                self._write_pod_status(pod)

    async def _probe(self, pod: _Pod, probe: _Probe, *, liveness: bool) -> None:
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            ok = await self._get(pod.ip, probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if liveness:
                if failures >= probe.failure_threshold and pod.process is not None:
                    pod.process.send_signal(signal.SIGTERM)  # the kubelet restarts it
                    return
            elif not pod.ready and successes >= probe.success_threshold:
                pod.ready = True
                self._write_pod_status(pod)
                self._wake.set()
            elif pod.ready and failures >= probe.failure_threshold:
                pod.ready = False
                self._write_pod_status(pod)
                self._wake.set()
            await asyncio.sleep(probe.period)

    async def _get(self, ip: str, probe: _Probe) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(
                f"http://{ip}:{probe.port}{probe.path}",
                timeout=aiohttp.ClientTimeout(total=probe.timeout),
            ) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # -- status --------------------------------------------------------------------------

    def _set_waiting(self, pod: _Pod, reason: str) -> None:
        pod.waiting, pod.ready = reason, False
        self._write_pod_status(pod)

    def _write_pod_status(self, pod: _Pod) -> None:
        with self.kube.lock:
            live = self.kube.store.get(PODS, pod.namespace, pod.name)
            if live is None:
                return
            container = (live.get("spec", {}).get("containers") or [{"name": "c"}])[0]
            state: JsonDict = (
                {"waiting": {"reason": pod.waiting}}
                if pod.waiting
                else {"running": {"startedAt": pod.started_at}}
            )
            status: JsonDict = {
                "name": container.get("name"), "image": container.get("image", ""),
                "imageID": "", "ready": pod.ready, "started": pod.waiting is None,
                "restartCount": pod.restarts, "state": state,
            }  # fmt: skip
            if pod.last_terminated:
                status["lastState"] = {"terminated": pod.last_terminated}
            phase = "Pending" if pod.waiting and not pod.restarts else "Running"
            updated = copy.deepcopy(live)
            updated["status"] = {
                "phase": phase,
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "hostIP": "127.0.0.1",
                "conditions": [
                    {"type": "Ready", "status": "True" if pod.ready else "False"},
                    {"type": "ContainersReady", "status": "True" if pod.ready else "False"},
                ],
                "containerStatuses": [status],
                "startTime": live["metadata"].get("creationTimestamp"),
            }
            if updated["status"] != live.get("status"):
                self.kube.store.replace_stored(PODS, live, updated, subresource="status")

    def _write_deployment_status(self, deployment: JsonDict) -> None:
        metadata = deployment["metadata"]
        wanted = template_hash(deployment)
        owned = [
            pod
            for pod in self._pods.values()
            if pod.namespace == metadata["namespace"]
            and pod.name.startswith(f"{metadata['name']}-")
            and not pod.terminating
        ]
        replicas = deployment.get("spec", {}).get("replicas", 1)
        ready = sum(pod.ready for pod in owned)
        status: JsonDict = {
            "observedGeneration": metadata["generation"],
            "replicas": len(owned),
            "updatedReplicas": sum(f"-{wanted}-" in pod.name for pod in owned),
        }
        if ready:
            status.update(readyReplicas=ready, availableReplicas=ready)
        if replicas - ready > 0:
            status["unavailableReplicas"] = replicas - ready
        status["conditions"] = [
            {"type": "Available", "status": "True" if ready >= replicas else "False"}
        ]
        if deployment.get("status") != status:
            updated = copy.deepcopy(deployment)
            updated["status"] = status
            self.kube.store.replace_stored(DEPLOYMENTS, deployment, updated, subresource="status")

    def _read_log(self, namespace: str, name: str) -> str | None:
        pod = self._pods.get((namespace, name))
        if pod is None or not pod.log_file.exists():
            return None
        return pod.log_file.read_text(errors="replace")


# -- helpers ---------------------------------------------------------------------------


def _owner(deployment: JsonDict) -> JsonDict:
    metadata = deployment["metadata"]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": metadata["name"],
            "uid": metadata["uid"], "controller": True}  # fmt: skip


def _owned_by(pod: JsonDict, deployment: JsonDict) -> bool:
    metadata = deployment["metadata"]
    return pod["metadata"].get("namespace") == metadata["namespace"] and any(
        ref.get("name") == metadata["name"] for ref in pod["metadata"].get("ownerReferences", [])
    )


def _scaled(value: int | str, replicas: int, *, up: bool) -> int:
    """maxSurge rounds up, maxUnavailable down, as the deployment controller does."""
    if isinstance(value, int):
        return value
    share = replicas * int(value.rstrip("%")) / 100
    return math.ceil(share) if up else math.floor(share)


def _mapped(value: str, mounts: list[str], root: Path) -> str:
    """A path under a mount, where the fake node put that mount."""
    for mount in mounts:
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(root / value.lstrip("/"))
    return value


async def _stop_process(process: asyncio.subprocess.Process | None, grace: float) -> None:
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
