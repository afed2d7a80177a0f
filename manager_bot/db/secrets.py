"""Every encrypted column, in one place: for key rotation and for at-rest checks."""

from __future__ import annotations

from collections.abc import Iterator

from manager_bot.crypto import Vault, VaultError
from manager_bot.db.models import Agent, AgentRevision, McpServer
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database

ENCRYPTED_FIELDS: dict[type, tuple[str, ...]] = {
    Agent: (
        "token_encrypted",
        "webhook_secret_encrypted",
        "llm_api_key_encrypted",
        "gateway_key_encrypted",
    ),
    AgentRevision: ("llm_api_key_encrypted",),
    # The URL too: hosted MCP servers often carry a secret in its path.
    McpServer: ("url_encrypted", "token_encrypted"),
}
Row = Agent | AgentRevision | McpServer


def _encrypted(rows: list[Row]) -> Iterator[tuple[Row, str]]:
    for row in rows:
        for field in ENCRYPTED_FIELDS[type(row)]:
            if getattr(row, field):
                yield row, field


async def rotate_secrets(database: Database, vault: Vault) -> int:
    """Re-encrypt every secret with the vault's first key, in one transaction."""
    count = 0
    async with database.session() as session:
        repos = Repositories(session)
        rows: list[Row] = [
            *await repos.agents.all(),
            *await repos.revisions.all(),
            *await repos.mcp_servers.all(),
        ]
        for row, field in _encrypted(rows):
            setattr(row, field, vault.rotate(getattr(row, field)))
            count += 1
    return count


async def unreadable_secrets(database: Database, vault: Vault) -> tuple[int, int]:
    """(secrets stored, of which the vault cannot decrypt): a read-only check for `doctor`."""
    stored = unreadable = 0
    async with database.session() as session:
        repos = Repositories(session)
        rows: list[Row] = [
            *await repos.agents.all(),
            *await repos.revisions.all(),
            *await repos.mcp_servers.all(),
        ]
        for row, field in _encrypted(rows):
            stored += 1
            try:
                vault.decrypt(getattr(row, field))
            except VaultError:
                unreadable += 1
    return stored, unreadable
