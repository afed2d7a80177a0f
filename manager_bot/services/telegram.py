"""Bot API calls made with an agent's token (not the manager's): identity and webhooks.

The manager owns every agent's webhook: it sets it (Kubernetes) or deletes it
(local polling) and checks the result, so agent pods never call getUpdates.
Errors come back as `AgentTokenError` with a reason a user can act on; the
token never appears in them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)

from manager_bot.metrics import TelegramErrorMetrics
from manager_bot.response_models import KeepResponseModels

# Telegram tokens are `<bot id>:<35 url-safe characters>`.
TOKEN_SHAPE = re.compile(r"^\d{5,15}:[A-Za-z0-9_-]{35}$")
# What agents need: messages only (edits, reactions and the rest are noise to an LLM chat).
AGENT_ALLOWED_UPDATES = ["message"]

T = TypeVar("T")


def looks_like_token(text: str) -> bool:
    return bool(TOKEN_SHAPE.fullmatch(text.strip()))


@dataclass(frozen=True)
class BotIdentity:
    id: int
    username: str
    first_name: str


@dataclass(frozen=True)
class WebhookStatus:
    url: str
    pending_update_count: int
    last_error_message: str | None
    last_error_date: int | None


class AgentTokenError(Exception):
    """A call with an agent's token failed; `reason` is one of the class constants."""

    INVALID = "invalid"  # revoked or never valid: Telegram says 401
    UNREACHABLE = "unreachable"  # network trouble or Telegram 5xx: try again later
    REJECTED = "rejected"  # Telegram refused the request (400), e.g. a bad webhook URL

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class AgentTelegram:
    """Bot API calls on behalf of agents, sharing one HTTP session for all tokens."""

    def __init__(self, *, api_url: str) -> None:
        self._session = AiohttpSession(api=TelegramAPIServer.from_base(api_url))
        self._session.middleware(TelegramErrorMetrics())
        self._session.middleware(KeepResponseModels())

    async def close(self) -> None:
        await self._session.close()

    def _bot(self, token: str) -> Bot:
        if not looks_like_token(token):
            raise AgentTokenError(AgentTokenError.INVALID, "not shaped like a bot token")
        return Bot(token, session=self._session)

    async def identify(self, token: str) -> BotIdentity:
        """getMe: who this token belongs to (raises INVALID for a revoked token)."""
        me = await self._call(self._bot(token).get_me())
        return BotIdentity(id=me.id, username=me.username or "", first_name=me.first_name)

    async def set_webhook(
        self, token: str, *, url: str, secret: str, drop_pending_updates: bool
    ) -> None:
        await self._call(
            self._bot(token).set_webhook(
                url=url,
                secret_token=secret,
                allowed_updates=AGENT_ALLOWED_UPDATES,
                drop_pending_updates=drop_pending_updates,
            )
        )

    async def delete_webhook(self, token: str, *, drop_pending_updates: bool = False) -> None:
        await self._call(self._bot(token).delete_webhook(drop_pending_updates=drop_pending_updates))

    async def webhook_status(self, token: str) -> WebhookStatus:
        info = await self._call(self._bot(token).get_webhook_info())
        last_error = info.last_error_date
        return WebhookStatus(
            url=info.url,
            pending_update_count=info.pending_update_count,
            last_error_message=info.last_error_message,
            last_error_date=int(last_error.timestamp()) if last_error else None,
        )

    @staticmethod
    async def _call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except TelegramUnauthorizedError:
            raise AgentTokenError(AgentTokenError.INVALID, "Telegram rejected the token") from None
        except (TelegramNetworkError, TelegramRetryAfter, TelegramServerError) as error:
            raise AgentTokenError(AgentTokenError.UNREACHABLE, type(error).__name__) from None
        except TelegramAPIError as error:
            # aiogram's message is Telegram's description; it never includes the token.
            raise AgentTokenError(AgentTokenError.REJECTED, error.message) from None
