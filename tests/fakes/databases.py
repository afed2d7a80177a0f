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


# Databases a test may take, highest first; their claims live in TEST_REDIS_URL's own.
SCRATCH_DATABASES = range(15, 0, -1)
CLAIM_SECONDS = 600  # longer than any test (pytest-timeout: 120 s); a killed run's lapse


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis URL to a database nobody else uses now, emptied before and after the test.

    Two test runs on one machine (a developer's beside CI) would otherwise empty each
    other's database midway: each test claims a free one (SET NX in the base database,
    released after)."""
    url = _require("TEST_REDIS_URL").rstrip("/")
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    claims = redis_asyncio.from_url(url)
    token = uuid.uuid4().hex
    try:
        number = await _claim(claims, token)
    except (OSError, redis_asyncio.ConnectionError) as error:
        await claims.aclose()
        pytest.fail(f"Redis at TEST_REDIS_URL is unreachable: {error}")
    scratch = f"{base}/{number}"
    client = redis_asyncio.from_url(scratch)
    try:
        await client.flushdb()
        yield scratch
    finally:
        await client.flushdb()
        await client.aclose()
        # Only our own claim: one that lapsed may be another run's by now.
        if await claims.get(_claim_key(number)) == token.encode():
            await claims.delete(_claim_key(number))
        await claims.aclose()


async def _claim(claims: redis_asyncio.Redis, token: str) -> int:
    own = int(claims.connection_pool.connection_kwargs.get("db", 0))  # it holds the claims
    for number in SCRATCH_DATABASES:
        if number == own:
            continue
        if await claims.set(_claim_key(number), token, nx=True, ex=CLAIM_SECONDS):
            return number
    pytest.fail("every scratch Redis database (1-15) is claimed by other test runs")


def _claim_key(number: int) -> str:
    return f"hatchbot-tests:scratch-db:{number}"


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
