"""`k8s/compose/compose.yaml`: one machine, production-like (manager, PostgreSQL, Redis).

Docker is not run here: these tests read the file as Compose would and check its
structure against the code it starts. The setting names come from the Settings
classes themselves (manager_bot/config.py), not from a list kept beside them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from manager_bot.__main__ import COMMANDS
from manager_bot.config import DEFAULT_DATABASE_URL, ManagerSettings

JsonDict = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "k8s" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
# ${NAME}, ${NAME:?message}, ${NAME:-default}...: Compose's interpolation.
INTERPOLATED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?\-+][^}]*)?\}")


def compose() -> JsonDict:
    loaded: JsonDict = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def setting_names() -> set[str]:
    """The environment names the manager reads (case-insensitive, no prefix or alias)."""
    config = ManagerSettings.model_config
    assert config.get("case_sensitive") is False and not config.get("env_prefix")
    for name, field in ManagerSettings.model_fields.items():
        assert field.alias is None and field.validation_alias is None, name
    return {name.upper() for name in ManagerSettings.model_fields}


def secret_names() -> set[str]:
    """Settings whose values are secrets (SecretStr: the database URL is one)."""
    return {
        name.upper()
        for name, field in ManagerSettings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }


def env_file_names(path: Path) -> set[str]:
    """Names an env file sets, commented-out examples included."""
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def test_the_three_services_their_volumes_and_start_order() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"manager", "postgres", "redis"}
    assert set(spec["volumes"]) == {"postgres-data", "hatchbot-data", "redis-data"}
    mounts = {name: service.get("volumes", []) for name, service in services.items()}
    assert "postgres-data:/var/lib/postgresql/data" in mounts["postgres"]
    assert "redis-data:/data" in mounts["redis"]
    # The manager's data directory: where the image's VOLUME is, and the default SQLite
    # URL's (relative) directory under the image's WORKDIR.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'VOLUME ["/app/data"]' in dockerfile and "WORKDIR /app" in dockerfile
    assert DEFAULT_DATABASE_URL.endswith("///data/hatchbot.db")
    assert [m for m in mounts["manager"] if m.split(":")[1] == "/app/data"] == [
        "hatchbot-data:/app/data"
    ]
    assert services["manager"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name, service in services.items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and len(check) > 1, name
        assert service["restart"] == "unless-stopped", name
    assert "/readyz" in " ".join(services["manager"]["healthcheck"]["test"])


def test_the_manager_is_built_from_the_repositorys_dockerfile_and_runs_run() -> None:
    manager = compose()["services"]["manager"]
    build = manager["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == REPO
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
    module, command = manager["command"]
    assert module == "manager_bot" and command in COMMANDS
    # Read-only as on Kubernetes: writes only to the data volume and a tmpfs.
    assert manager["read_only"] is True and manager["tmpfs"] == ["/tmp"]


def test_every_env_name_the_manager_gets_is_a_setting() -> None:
    settings = setting_names()
    environment: dict[str, str] = compose()["services"]["manager"]["environment"]
    assert set(environment) <= settings, set(environment) - settings
    assert environment["BACKEND"] == "local"
    assert environment["DATABASE_URL"].startswith("postgresql+asyncpg://hatchbot:")
    assert environment["DATABASE_URL"].endswith("@postgres:5432/hatchbot")
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert environment["METRICS_PORT"] in " ".join(
        compose()["services"]["manager"]["healthcheck"]["test"]
    )
    # What the user's env file holds: the example's names are settings too.
    (env_file,) = compose()["services"]["manager"]["env_file"]
    example = COMPOSE_DIR / f"{env_file}.example"
    assert env_file_names(example) <= settings, env_file_names(example) - settings
    assert {"MANAGER_BOT_TOKEN", "ENCRYPTION_KEYS"} <= env_file_names(example)


def test_no_secret_is_written_in_the_files() -> None:
    spec = compose()
    manager_env: dict[str, str] = spec["services"]["manager"]["environment"]
    for name in secret_names() & set(manager_env):
        value = manager_env[name]
        if name == "DATABASE_URL":  # its password comes from the user's .env
            assert ":${POSTGRES_PASSWORD:?" in value, value
        elif name == "REDIS_URL":  # Redis is on the internal network only, no password
            assert "@" not in value
        else:
            raise AssertionError(f"{name} belongs in the env file, not in compose.yaml")
    password = INTERPOLATED.fullmatch(
        spec["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    )
    assert password is not None and password.group(1) == "POSTGRES_PASSWORD"
    # The files the user creates are ignored by git; the example holds no values.
    (env_file,) = spec["services"]["manager"]["env_file"]
    ignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert env_file in ignored and ".env" in ignored
    example = (COMPOSE_DIR / f"{env_file}.example").read_text()
    assert all(line.startswith("#") or line.endswith("=") for line in example.splitlines() if line)


def test_postgres_and_redis_are_reachable_only_from_the_manager() -> None:
    spec = compose()
    services = spec["services"]
    assert spec["networks"]["internal"]["internal"] is True
    for name in ("postgres", "redis"):
        assert services[name]["networks"] == ["internal"] and "ports" not in services[name]
    assert set(services["manager"]["networks"]) == {"internal", "outside"}
    # Status endpoints published on the host's loopback only.
    assert all(port.startswith("127.0.0.1:") for port in services["manager"]["ports"])
