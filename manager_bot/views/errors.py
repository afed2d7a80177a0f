"""Failures and refusals in plain words, in the user's language.

A failure (DeployFailed) gets one text per ErrorCode with what to do next, and a
reference: the internal detail (an API's answer, a status code) goes only to the log,
under the reference the user is shown, so an admin can find it when the user quotes it.
A refusal (settings, an access list, a token or an endpoint URL the platform cannot
accept) gets the words of its stable code, with the parameters they need.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from html import escape

from manager_bot import texts
from manager_bot.gateway.endpoints import EndpointRefused
from manager_bot.logs import new_request_id
from manager_bot.services.agent_tools import ToolsProblem, ToolsRefused
from manager_bot.services.errors import (
    AccessProblem,
    BotAlreadyUsed,
    ConfigProblem,
    DeployFailed,
    DeployThrottled,
    EndpointProblem,
    HatchbotError,
    InvalidAgentConfig,
    InvalidBotToken,
    NoPreviousRevision,
    Param,
    QuotaReached,
    TokenOfAnotherBot,
    TokenProblem,
)

log = logging.getLogger(__name__)

Refusal = InvalidAgentConfig | InvalidBotToken | EndpointRefused
Problem = ConfigProblem | AccessProblem | TokenProblem | EndpointProblem


def explain(failure: DeployFailed) -> str:
    """What the user reads about a failed step; the log keeps the detail."""
    reference = new_request_id()
    log.warning(
        "%s failed (%s) ref=%s: %s", failure.step, failure.code.value, reference, failure.hint
    )
    return (
        texts.FAILURE_WORDS[failure.code]
        + " "
        + texts.FAILURE_REFERENCE.format(code=failure.code.value, reference=reference)
    )


def words_of(problem: Problem) -> str:
    """The text of a refusal's code, in the current language (placeholders unfilled)."""
    if isinstance(problem, AccessProblem):
        return texts.ACCESS_PROBLEMS[problem]
    if isinstance(problem, ConfigProblem):
        return texts.CONFIG_PROBLEMS[problem]
    if isinstance(problem, TokenProblem):
        return texts.TOKEN_PROBLEMS[problem]
    return texts.ENDPOINT_PROBLEMS[problem]


def refusal(error: Refusal) -> str:
    """Why input was refused, as a clause for the sentence around it (HTML-escaped)."""
    params: Mapping[str, Param] = {} if isinstance(error, InvalidBotToken) else error.params
    escaped = {name: escape(v) if isinstance(v, str) else v for name, v in params.items()}
    return words_of(error.problem).format(**escaped)


def said(error: HatchbotError) -> str:
    """What a failed action tells the user, whatever domain error it met: one place, so
    no error's internal wording reaches a chat."""
    if isinstance(error, DeployFailed):
        return texts.ACTION_FAILED_PLAIN.format(reason=explain(error))
    if isinstance(error, (InvalidAgentConfig, InvalidBotToken)):
        return texts.ACTION_REFUSED.format(reason=refusal(error))
    if isinstance(error, ToolsRefused):
        return tools_refusal(error)
    if isinstance(error, NoPreviousRevision):
        return texts.NO_PREVIOUS
    if isinstance(error, QuotaReached):
        return texts.QUOTA.format(limit=error.limit)
    if isinstance(error, DeployThrottled):
        return texts.DEPLOY_THROTTLED.format(minutes=-(-error.retry_in // 60))
    if isinstance(error, BotAlreadyUsed):
        return texts.BOT_IN_USE.format(username=escape(str(error)))
    if isinstance(error, TokenOfAnotherBot):
        return texts.TOKEN_OF_ANOTHER_BOT.format(given=error.given, expected=error.expected)
    # Anything else is a fault of ours: words for that, and the detail in the log.
    return texts.ACTION_FAILED_PLAIN.format(
        reason=explain(DeployFailed(type(error).__name__, str(error)))
    )


def tools_refusal(error: ToolsRefused) -> str:
    """Why a server was not added or removed, in the user's language."""
    words = {
        ToolsProblem.TOO_MANY: texts.TOOLS_TOO_MANY,
        ToolsProblem.DUPLICATE: texts.TOOLS_DUPLICATE,
        ToolsProblem.GONE: texts.TOOLS_GONE,
        ToolsProblem.BAD_TOKEN: texts.TOOLS_BAD_TOKEN,
        ToolsProblem.RESERVED_HEADER: texts.TOOLS_RESERVED_HEADER,
    }[error.problem]
    return words.format(**{key: escape(str(value)) for key, value in error.params.items()})
