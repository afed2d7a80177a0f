"""Failures in plain words: one text per ErrorCode with what to do next, and a reference.

The internal detail (an API's answer, a status code) goes only to the log, under the
reference the user is shown, so an admin can find it when the user quotes it.
"""

from __future__ import annotations

import logging

from manager_bot import texts
from manager_bot.logs import new_request_id
from manager_bot.services.errors import DeployFailed

log = logging.getLogger(__name__)


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
