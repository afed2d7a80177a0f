"""The runtime as its pod runs it: the image's user, a read-only directory, only the pod's env.

No container engine runs on the test machines, so the test plays the kubelet:
it builds the environment from the agent's Secret and Deployment exactly as
generated, adds the image's own ENV from the Dockerfile's final stage, runs
`python -m runtime` as the image's USER from a read-only copy of the code, and
talks to it through the fakes. What differs from a pod, and why: PORT (a free
port instead of 8080, so tests can run side by side) and PYTHONPATH (the test
machine's site-packages instead of the image's /opt/venv).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from manager_bot.backends.base import AgentSecrets, AgentSpec
from manager_bot.backends.manifests import ClusterConfig, agent_manifests
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeTelegram
from tests.runtime.conftest import reaped, set_webhook, terminate, wait_ready

REPO = Path(__file__).resolve().parents[2]
LLM_KEY = "sk-podkeypodkeypodkeypodkey00"
HOOK = "pod_webhook_secret_value_0123456789"


def final_stage(dockerfile: str) -> list[str]:
    """Instructions of the last stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last_from:]


def image_facts() -> tuple[dict[str, str], int, int]:
    """(ENV, uid, gid) of the final image, read from the Dockerfile."""
    stage = final_stage((REPO / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in stage:
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())  # type: ignore[misc]
    (user,) = [line[5:].strip() for line in stage if line.startswith("USER ")]
    uid, _, gid = user.partition(":")
    return env, int(uid), int(gid or uid)


def test_the_image_is_slim_pinned_and_runs_as_a_user() -> None:
    stage = final_stage((REPO / "Dockerfile").read_text())
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", stage[0])
    env, uid, _ = image_facts()
    assert uid != 0
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert not [line for line in stage if re.search(r"\b(gcc|build-essential|pip install)", line)]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"tests", "data", ".git"} <= set(ignored)


def pod_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    """What the kubelet gives the container: literal env, then the Secret through envFrom."""
    secret = next(o for o in manifests if o["kind"] == "Secret")
    deployment = next(o for o in manifests if o["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    for source in container["envFrom"]:
        assert source["secretRef"]["name"] == secret["metadata"]["name"]
        env.update(secret["stringData"])
    return env


def interpreter_for(uid: int, gid: int, pythonpath: str) -> tuple[str, dict[str, Any]]:
    """A Python of this version that `uid` may run, and how to run as it."""
    if os.geteuid() != 0:
        return sys.executable, {}  # already not root
    as_user: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": []}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (
        sys.executable,
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ):
        if not Path(candidate).exists():
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import aiohttp, openai, pydantic_settings"],
                env={"PYTHONPATH": pythonpath}, capture_output=True, check=False, **as_user,
            )  # fmt: skip
        except PermissionError:  # e.g. an interpreter under root's 0700 home
            continue
        if probe.returncode == 0:
            return candidate, as_user
    raise AssertionError(f"no Python {version} that uid {uid} can run with {pythonpath}")


def tree(root: Path) -> list[Path]:
    return sorted(path.relative_to(root) for path in root.rglob("*"))


@pytest.fixture
def read_only_app() -> Iterator[Path]:
    """A copy of the runtime's code nobody but root could change (like the image's /app)."""
    with tempfile.TemporaryDirectory(prefix="hatchbot-pod-") as directory:
        app = Path(directory) / "app"
        shutil.copytree(
            REPO / "runtime", app / "runtime", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in [app, *app.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        Path(directory).chmod(0o755)
        yield app


async def test_the_runtime_runs_as_its_pod_does_and_answers(
    telegram: FakeTelegram, openai_server: FakeOpenAI, read_only_app: Path
) -> None:
    bot = telegram.add_bot(username="pod_bot")
    spec = AgentSpec(
        agent_id="pod0000001",
        secrets=AgentSecrets(
            bot_token=SecretStr(bot.token),
            webhook_secret=SecretStr(HOOK),
            llm_api_key=SecretStr(LLM_KEY),
        ),
        llm_model="gpt-4o-mini",
        system_prompt="You are a pod.",
        llm_base_url=openai_server.url,
        telegram_api_url=telegram.url,
    )
    cluster = ClusterConfig(
        namespace="agents", image="hatchbot:test", router="istio", public_url="https://x.example"
    )
    image_env, uid, gid = image_facts()
    pythonpath = os.pathsep.join(
        dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))
    )
    python, as_user = interpreter_for(uid, gid, pythonpath)
    port = str(free_port())
    env = {
        **{k: v for k, v in image_env.items() if k != "PATH"},
        "HOME": str(read_only_app),
        **pod_env(agent_manifests(spec, cluster)),
        "PORT": port,
        "PYTHONPATH": pythonpath,
    }
    before = tree(read_only_app)
    process = await asyncio.create_subprocess_exec(
        python, "-m", "runtime", cwd=read_only_app, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, **as_user,
    )  # fmt: skip
    async with reaped(process):
        await wait_ready(port, timeout=60)
        await set_webhook(telegram, bot, f"http://127.0.0.1:{port}/webhook/pod0000001", HOOK)
        user = telegram.user(bot)
        await user.send("hello pod")
        await user.wait_for(text_contains="echo: hello pod", timeout=20)
        assert await terminate(process, timeout=20) == 0
    output = (await process.stdout.read()).decode() if process.stdout else ""
    assert bot.token not in output and LLM_KEY not in output and HOOK not in output
    assert tree(read_only_app) == before  # nothing written, not even bytecode
    if as_user:
        assert "Permission denied" not in output
