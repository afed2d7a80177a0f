"""Checking a user's own LLM key with the cheapest call there is (listing models)."""

from __future__ import annotations

import asyncio
import enum
import importlib
from typing import TYPE_CHECKING

from manager_bot.services.providers import Provider

if TYPE_CHECKING:
    import openai


class KeyCheck(enum.StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"


async def check_key(provider: Provider, key: str) -> KeyCheck:
    """401/403 means the provider refused the key; anything else is not the user's fault."""
    # The SDK takes 0.4 s to import: not at start-up, and the first check imports it off
    # the event loop (the other chats go on meanwhile); later it is already loaded.
    await asyncio.to_thread(importlib.import_module, "openai")
    import openai

    if provider.runtime_provider == "azure":
        client: openai.AsyncOpenAI = openai.AsyncAzureOpenAI(
            azure_endpoint=provider.base_url or "",
            api_key=key,
            api_version=provider.api_version or "2024-10-21",
            timeout=10,
            max_retries=0,
        )
    else:
        client = openai.AsyncOpenAI(
            base_url=provider.base_url, api_key=key, timeout=10, max_retries=0
        )
    try:
        await client.models.list()
    except (openai.AuthenticationError, openai.PermissionDeniedError):
        return KeyCheck.REJECTED
    except openai.OpenAIError:
        return KeyCheck.UNREACHABLE
    finally:
        await client.close()
    return KeyCheck.OK
