"""Alembic, configured in code (the repository's top level has no alembic.ini)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from manager_bot.db.models import Base
from manager_bot.db.session import Database, ensure_sqlite_directory


def migrations_dir() -> Path:
    """Alembic's scripts: inside the package when installed from a wheel (pyproject.toml
    maps migrations/ to manager_bot/migrations), else beside the packages, as in the
    repository, an editable install and the image (/app)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "migrations"
    return installed if (installed / "env.py").is_file() else package.parent / "migrations"


MIGRATIONS_DIR = migrations_dir()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    ensure_sqlite_directory(url)
    # env.py runs its own event loop, so Alembic goes to a thread.
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def schema_differences(url: str) -> list[Any]:
    """What autogenerate would change: empty when the models match the migrated schema."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    """The newest migration in migrations/."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(database: Database) -> str | None:
    """The revision the database is at (None: never migrated)."""
    async with database.engine.connect() as connection:
        revision: str | None = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
    return revision
