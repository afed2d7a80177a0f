"""Domain errors: each says what failed and what the user can do about it."""

from __future__ import annotations


class HatchbotError(Exception):
    """Base of the errors a handler turns into a helpful reply."""


class AgentNotFound(HatchbotError):
    """No such agent for this user: forged ids and other users' agents look the same."""


class QuotaReached(HatchbotError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"agent quota of {limit} reached")
        self.limit = limit


class DeployThrottled(HatchbotError):
    """Too many deploys by one user in a short time; `retry_in` seconds until the next."""

    def __init__(self, retry_in: int) -> None:
        super().__init__(f"too many deploys; try again in {retry_in} s")
        self.retry_in = retry_in


class InvalidBotToken(HatchbotError):
    """The token is malformed, revoked, or Telegram cannot be reached to check it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BotAlreadyUsed(HatchbotError):
    """Another live agent already runs this bot (one token, one poller/webhook)."""


class InvalidAgentConfig(HatchbotError):
    """A provider, model, key or prompt the platform cannot accept."""


class NoPreviousRevision(HatchbotError):
    """Revert asked for, but the agent has only one revision."""


class DeployFailed(HatchbotError):
    """A step of a deploy or change failed; nothing half-made was left behind."""

    def __init__(self, step: str, hint: str, *, rolled_back: bool = True) -> None:
        super().__init__(f"{step}: {hint}")
        self.step = step
        self.hint = hint
        self.rolled_back = rolled_back


class InvalidAccess(InvalidAgentConfig):
    """An access list the platform cannot accept (too many ids, not ids at all)."""


class TokenOfAnotherBot(HatchbotError):
    """A replacement token that belongs to another bot than the agent's."""

    def __init__(self, *, expected: str, given: str) -> None:
        super().__init__(f"the token is @{given}'s, not @{expected}'s")
        self.expected = expected
        self.given = given
