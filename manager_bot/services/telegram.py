"""Bot API calls about agents: identity, webhooks and profile with an agent's token, and
the Managed Bots calls only the manager's own token may make (access settings).

The manager owns every agent's webhook: it sets it (Kubernetes) or deletes it
(local polling) and checks the result, so agent pods never call getUpdates.
Errors come back as `AgentTokenError` with a reason a user can act on; the
token never appears in them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BotCommand
from pydantic import SecretStr

from manager_bot.metrics import TelegramErrorMetrics
from manager_bot.response_models import KeepResponseModels
from manager_bot.telegram_session import JsonSession

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
class ManagedAccess:
    """A Managed Bot's access settings as Telegram keeps them (the owner always has it)."""

    restricted: bool
    user_ids: tuple[int, ...] = ()


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

    def __init__(self, *, api_url: str, manager_token: SecretStr | None = None) -> None:
        self._session = JsonSession(api=TelegramAPIServer.from_base(api_url))
        self._session.middleware(TelegramErrorMetrics())
        self._session.middleware(KeepResponseModels())
        # For what only the manager bot may ask about the bots it manages.
        self._manager_token = manager_token

    @property
    def manages_bots(self) -> bool:
        """Whether Managed Bots' own settings can be changed (the manager's token is here)."""
        return self._manager_token is not None

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

    async def set_commands(self, token: str, commands: Sequence[tuple[str, str]]) -> None:
        """setMyCommands in the default scope: the menu every user of the bot sees."""
        await self._call(
            self._bot(token).set_my_commands(
                [BotCommand(command=name, description=text) for name, text in commands]
            )
        )

    async def set_descriptions(self, token: str, *, description: str, short: str) -> None:
        """setMyDescription (the empty chat's "What can this bot do?", 0-512 characters)
        and setMyShortDescription (the profile page and shared links, 0-120)."""
        bot = self._bot(token)
        await self._call(bot.set_my_description(description=description))
        await self._call(bot.set_my_short_description(short_description=short))

    async def set_managed_access(
        self, bot_id: int, *, restricted: bool, user_ids: Sequence[int] = ()
    ) -> None:
        """setManagedBotAccessSettings with the manager's token: `restricted` lets only the
        owner and `user_ids` (at most 10) use the bot."""
        await self._call(
            self._manager().set_managed_bot_access_settings(
                user_id=bot_id,
                is_access_restricted=restricted,
                added_user_ids=list(user_ids) if restricted else None,
            )
        )

    async def managed_access(self, bot_id: int) -> ManagedAccess:
        """getManagedBotAccessSettings with the manager's token."""
        settings = await self._call(self._manager().get_managed_bot_access_settings(user_id=bot_id))
        return ManagedAccess(
            restricted=settings.is_access_restricted,
            user_ids=tuple(user.id for user in settings.added_users or ()),
        )

    def _manager(self) -> Bot:
        if self._manager_token is None:
            raise AgentTokenError(AgentTokenError.REJECTED, "the manager's token is not configured")
        return self._bot(self._manager_token.get_secret_value())

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
