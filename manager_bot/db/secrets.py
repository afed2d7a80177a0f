"""Every encrypted column, in one place: for key rotation and for at-rest checks."""

from __future__ import annotations

from manager_bot.crypto import Vault
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database


async def rotate_secrets(database: Database, vault: Vault) -> int:
    """Re-encrypt every secret with the vault's first key, in one transaction."""
    count = 0
    async with database.session() as session:
        repos = Repositories(session)
        for agent in await repos.agents.all():
            agent.token_encrypted = vault.rotate(agent.token_encrypted)
            agent.webhook_secret_encrypted = vault.rotate(agent.webhook_secret_encrypted)
            count += 2
            if agent.llm_api_key_encrypted:
                agent.llm_api_key_encrypted = vault.rotate(agent.llm_api_key_encrypted)
                count += 1
        for revision in await repos.revisions.all():
            if revision.llm_api_key_encrypted:
                revision.llm_api_key_encrypted = vault.rotate(revision.llm_api_key_encrypted)
                count += 1
    return count
