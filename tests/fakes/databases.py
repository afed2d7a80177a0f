"""Database fixtures: a SQLite file per test, and a fresh PostgreSQL database / Redis db.

PostgreSQL and Redis come from `TEST_POSTGRES_URL` and `TEST_REDIS_URL`. Outside
CI a missing variable skips those tests; in CI (`CI` set) or when the variable
is set but the server does not answer, they fail: a green run must not hide a
database that was never tested.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from sqlalchemy.engine import make_url


def _require(variable: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    message = f"{variable} is not set; it names the server these tests need"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An aiosqlite URL to a new, empty database file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'hatchbot.db'}"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """An asyncpg URL to a new, empty PostgreSQL database, dropped afterwards."""
    base = make_url(_require("TEST_POSTGRES_URL")).set(drivername="postgresql+asyncpg")
    name = f"hatchbot_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(admin_dsn)
    except (OSError, asyncpg.PostgresError) as error:
        pytest.fail(f"PostgreSQL at TEST_POSTGRES_URL is unreachable: {error}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis URL to database 15, emptied before and after the test."""
    url = _require("TEST_REDIS_URL").rstrip("/")
    scratch = url.rsplit("/", 1)[0] + "/15" if url.count("/") > 2 else url + "/15"
    client = redis_asyncio.from_url(scratch)
    try:
        await client.flushdb()
    except (OSError, redis_asyncio.ConnectionError) as error:
        await client.aclose()
        pytest.fail(f"Redis at TEST_REDIS_URL is unreachable: {error}")
    try:
        yield scratch
    finally:
        await client.flushdb()
        await client.aclose()


async def raw_database_bytes(url: str) -> bytes:
    """Everything the database holds on disk: the SQLite files, or a pg_dump."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = Path(parsed.database or "")
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    dump = await asyncio.to_thread(
        subprocess.run,
        [
            "pg_dump",
            "-h",
            parsed.host or "127.0.0.1",
            "-U",
            parsed.username or "postgres",
            parsed.database or "",
        ],
        capture_output=True,
        check=True,
    )
    return dump.stdout
