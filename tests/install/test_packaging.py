"""The wheel, installed as a user installs it (`pip install .`, not editable).

The wheel is built from a copy of the checkout (so the build leaves nothing in
it) and installed without its dependencies into a fresh virtual environment.
The dependencies come from this test run's own site-packages on PYTHONPATH, the
one liberty taken: PYTHONPATH names no checkout, and every command runs in an
empty directory, so what runs is the installed package or nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from manager_bot.db.migrate import head_revision
from tests.fakes.image import site_packages
from tests.fakes.loopback import free_port
from tests.fakes.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
# What the build reads (pyproject.toml names these); nothing else of the checkout.
SOURCES = ("pyproject.toml", "README.md", "manager_bot", "runtime", "migrations")
COMMANDS = ("run", "gateway", "migrate", "keygen", "rotate-keys", "doctor")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # empty: nothing importable from the current directory

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "hatchbot"

    def env(self, **env: str) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": site_packages(), **env}

    def run(self, *command: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command], cwd=self.workdir, capture_output=True, text=True,
            timeout=180, env=self.env(**env),
        )  # fmt: skip


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"pip {args[0]} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(origin, source / name)
    # The build backend (pyproject's [build-system]) comes from the package index.
    _pip("wheel", "--no-deps", "--wheel-dir", str(root / "dist"), str(source))
    (wheel,) = (root / "dist").glob("hatchbot-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index", str(wheel))
    workdir = root / "work"
    workdir.mkdir()
    return Installed(wheel=wheel, venv=venv, workdir=workdir)


def test_the_wheel_holds_every_package_and_the_migrations(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    checkout_packages = {
        init.relative_to(REPO).as_posix()
        for package in ("manager_bot", "runtime")
        for init in (REPO / package).rglob("__init__.py")
    }
    assert checkout_packages <= names, "add the missing package to pyproject's packages"
    migrations = {
        f"manager_bot/migrations/{path.relative_to(REPO / 'migrations').as_posix()}"
        for path in (REPO / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "manager_bot/migrations/env.py" in migrations
    assert migrations <= names
    assert "manager_bot/locales/ru/LC_MESSAGES/messages.po" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "hatchbot = manager_bot.__main__:entry_point" in (
        zipfile.ZipFile(installed.wheel).read(entry_points).decode()
    )


def test_a_wheel_install_migrates_a_fresh_database(installed: Installed) -> None:
    where = installed.run(
        installed.python, "-c", "from manager_bot.db.migrate import MIGRATIONS_DIR; print(MIGRATIONS_DIR)"
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stderr
    for command in (
        [installed.script, "migrate"],
        [installed.python, "-m", "manager_bot", "migrate"],
    ):
        database = installed.workdir / f"{len(command)}.db"
        done = installed.run(*command, DATABASE_URL=f"sqlite+aiosqlite:///{database}")
        assert done.returncode == 0, done.stderr
        assert "database upgraded to the latest schema" in done.stdout
        with sqlite3.connect(database) as connection:
            (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert revision == head_revision()
        assert {"users", "agents", "audit_log"} <= tables


def test_the_console_script_has_the_same_commands_and_a_version(installed: Installed) -> None:
    version = installed.run(installed.script, "--version")
    assert version.returncode == 0
    assert version.stdout.strip() == "hatchbot 0.1.0"
    help_text = installed.run(installed.script, "--help").stdout
    assert help_text.startswith("usage: hatchbot")
    for command in COMMANDS:
        assert f"\n    {command}" in help_text
    key = installed.run(installed.script, "keygen")
    assert key.returncode == 0 and len(key.stdout.strip()) == 44  # a Fernet key
    refused = installed.run(installed.script, "gateway", LOG_LEVEL="chatty")
    assert refused.returncode == 2
    assert refused.stderr.startswith("hatchbot: invalid configuration: LOG_LEVEL")


def test_the_images_build_stage_has_what_the_wheel_is_built_from() -> None:
    """No container engine runs here: the Dockerfile's `pip install .` is checked by its COPYs."""
    builder = (REPO / "Dockerfile").read_text().split("\nFROM ")[1]  # the first stage
    copied = {
        name
        for line in builder.splitlines()
        if line.startswith("COPY ")
        for name in line.split()[1:-1]  # sources; the last word is the destination
    }
    assert set(SOURCES) <= copied


async def test_log_level_applies_to_the_gateway(installed: Installed, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    assert installed.run(installed.script, "migrate", DATABASE_URL=url).returncode == 0
    key = installed.run(installed.script, "keygen").stdout.strip()
    outputs = {}
    for level in ("INFO", "WARNING"):
        port = free_port()
        output = tmp_path / f"{level}.log"
        with output.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                installed.script, "gateway", cwd=installed.workdir, stdout=sink, stderr=sink,
                env=installed.env(
                    DATABASE_URL=url, ENCRYPTION_KEYS=key, GATEWAY_PORT=str(port), LOG_LEVEL=level
                ),
            )  # fmt: skip

        async def ready(port: int = port) -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/readyz") as answer,
                ):
                    return answer.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await wait_until(ready, timeout=60)
        finally:
            process.terminate()
            await process.wait()
        outputs[level] = output.read_text()
    assert "LLM gateway serving" in outputs["INFO"]  # an INFO line
    assert "LLM gateway serving" not in outputs["WARNING"]
    assert key not in outputs["INFO"] + outputs["WARNING"]
