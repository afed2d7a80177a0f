"""Domain errors: each says what failed and what the user can do about it."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why an action failed, stable across releases: users quote it, texts key on it."""

    CLUSTER_DENIED = "cluster-denied"  # the cluster refused our request (permissions)
    CLUSTER_UNAVAILABLE = "cluster-unavailable"  # unreachable, overloaded or busy: retry
    CLUSTER_REJECTED = "cluster-rejected"  # the cluster refused the objects themselves
    AGENT_CRASHED = "agent-crashed"  # the bot started and kept stopping
    AGENT_CHANGED = "agent-changed"  # stopped or deleted while the action ran
    TOKEN_REVOKED = "token-revoked"  # Telegram no longer accepts the bot's token
    TELEGRAM_UNAVAILABLE = "telegram-unavailable"  # Telegram unreachable or failing: retry
    TELEGRAM_REJECTED = "telegram-rejected"  # Telegram refused the webhook
    INTERNAL = "internal"  # a fault on our side


# What a refusal's words need besides its code: a limit, a provider's label, a host.
Param = int | str


class ConfigProblem(StrEnum):
    """Why an agent's settings were refused (InvalidAgentConfig); texts key on it."""

    UNKNOWN_PROVIDER = "unknown-provider"  # {provider}
    NOT_A_MODEL = "not-a-model"  # {model}
    KEY_NEEDED = "key-needed"  # {provider}
    ENDPOINT_NEEDED = "endpoint-needed"
    PROMPT_EMPTY = "prompt-empty"
    PROMPT_TOO_LONG = "prompt-too-long"  # {limit}
    DESCRIPTION_TOO_LONG = "description-too-long"  # {limit}
    MANAGED_TOKEN = "managed-token"  # a Managed Bot's token is Telegram's to replace


class AccessProblem(StrEnum):
    """Why an access list was refused (InvalidAccess)."""

    IDS_WITHOUT_LIST = "ids-without-list"
    EMPTY = "empty"
    TOO_MANY = "too-many"  # {limit}
    TOO_MANY_FOR_MANAGED = "too-many-for-managed"  # {limit}: Telegram's own cap
    NOT_AN_ID = "not-an-id"  # a number, but no Telegram user id
    NOT_NUMBERS = "not-numbers"


class TokenProblem(StrEnum):
    """Why a bot token was refused (InvalidBotToken); the values of AgentTokenError's."""

    INVALID = "invalid"  # malformed, revoked or never valid
    UNREACHABLE = "unreachable"  # Telegram could not be asked: try again later
    REJECTED = "rejected"  # Telegram refused the request itself


class EndpointProblem(StrEnum):
    """Why a user's endpoint URL was refused (gateway.endpoints.EndpointRefused)."""

    EMPTY = "empty"
    TOO_LONG = "too-long"  # {limit}
    SPACES = "spaces"
    NOT_HTTP = "not-http"
    FRAGMENT = "fragment"
    QUERY = "query"
    NOT_A_URL = "not-a-url"
    CREDENTIALS = "credentials"
    NO_HOST = "no-host"
    BAD_PORT = "bad-port"
    IPV6_ZONE = "ipv6-zone"
    BAD_HOST = "bad-host"
    PRIVATE_ADDRESS = "private-address"  # {host}
    UNUSUAL_IP = "unusual-ip"  # {host}
    LOCAL_NAME = "local-name"  # {host}
    NOT_FULL_NAME = "not-full-name"  # {host}
    NOT_FOUND = "not-found"  # {host}
    NO_ADDRESS = "no-address"  # {host}
    RESOLVES_INSIDE = "resolves-inside"  # {host}


def cluster_code(status: int | None) -> ErrorCode:
    """The code of a backend failure, from the cluster API's status (None: not an API)."""
    if status is None:
        return ErrorCode.INTERNAL
    if status == 403:
        return ErrorCode.CLUSTER_DENIED
    if status == 0 or status >= 500 or status in (409, 429):
        return ErrorCode.CLUSTER_UNAVAILABLE
    return ErrorCode.CLUSTER_REJECTED


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

    def __init__(self, problem: TokenProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem

    @property
    def reason(self) -> TokenProblem:
        """As `AgentTokenError.reason` spells it (the values are the same)."""
        return self.problem


class BotAlreadyUsed(HatchbotError):
    """Another live agent already runs this bot (one token, one poller/webhook)."""


class InvalidAgentConfig(HatchbotError):
    """A provider, model, key or prompt the platform cannot accept.

    `problem` is what the user is told (views/errors.py renders it in their language);
    `params` are what its words need (a limit, a provider's label). `str(error)` is the
    code and the parameters, for the log."""

    problem: ConfigProblem | AccessProblem

    def __init__(self, problem: ConfigProblem | AccessProblem, **params: Param) -> None:
        super().__init__(f"{problem.value} {params}" if params else problem.value)
        self.problem = problem
        self.params = params


class NoPreviousRevision(HatchbotError):
    """Revert asked for, but the agent has only one revision."""


class DeployFailed(HatchbotError):
    """A step of a deploy or change failed; nothing half-made was left behind.

    `code` is what the user is told (in plain words, views/errors.py); `hint` is the
    internal detail, for the log only."""

    def __init__(
        self, step: str, hint: str, *, rolled_back: bool = True,
        code: ErrorCode = ErrorCode.INTERNAL,
    ) -> None:  # fmt: skip
        super().__init__(f"{step}: {hint}")
        self.step = step
        self.hint = hint
        self.rolled_back = rolled_back
        self.code = code


class InvalidAccess(InvalidAgentConfig):
    """An access list the platform cannot accept (too many ids, not ids at all)."""

    problem: AccessProblem

    def __init__(self, problem: AccessProblem, **params: Param) -> None:
        super().__init__(problem, **params)


class TokenOfAnotherBot(HatchbotError):
    """A replacement token that belongs to another bot than the agent's."""

    def __init__(self, *, expected: str, given: str) -> None:
        super().__init__(f"the token is @{given}'s, not @{expected}'s")
        self.expected = expected
        self.given = given
