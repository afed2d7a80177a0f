"""The image contract, read from the Dockerfile: what a container of our image starts with.

No container engine runs on the test machines. What a pod of the image would get
(ENTRYPOINT and CMD, WORKDIR, USER, ENV) is read from the Dockerfile's final
stage, and the code is a read-only copy of what the image copies into /app.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def final_stage(dockerfile: str) -> list[str]:
    """Instructions of the last stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last_from:]


@dataclass(frozen=True)
class ImageContract:
    env: dict[str, str]
    uid: int
    gid: int
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    copied: list[str]  # what the final stage copies from the build context into WORKDIR


def image_contract(dockerfile: Path = REPO / "Dockerfile") -> ImageContract:
    stage = final_stage(dockerfile.read_text())
    env: dict[str, str] = {}
    workdir, entrypoint, cmd, copied = "/", [], [], []
    user = "0"
    for line in stage:
        instruction, _, rest = line.partition(" ")
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in rest.split())  # type: ignore[misc]
        elif instruction == "USER":
            user = rest.strip()
        elif instruction == "WORKDIR":
            workdir = rest.strip()
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)  # the exec form: the shell form is not used
        elif instruction == "CMD":
            cmd = json.loads(rest)
        elif instruction == "COPY" and not rest.startswith("--from"):
            copied.append(rest.split()[0])
    uid, _, gid = user.partition(":")
    return ImageContract(env, int(uid), int(gid or uid), workdir, entrypoint, cmd, copied)


def copy_app(contract: ImageContract, target: Path) -> Path:
    """What the image copies into WORKDIR, read-only for everyone (as under the image's USER)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in contract.copied:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(source, target / name)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return target


def site_packages() -> str:
    """The test machine's site-packages: the image's /opt/venv stands for it."""
    paths = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys((paths["purelib"], paths["platlib"])))


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
