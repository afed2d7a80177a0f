"""Health verdicts as stable codes and parameters, for words in the owner's language.

A verdict stores its kind (`HealthKind`) and a raw reason in English ("OOMKilled
(restarted 5 times)", "exited with code -9, restarted 3 times"): the raw reason is
for logs and admins. What an owner reads is rendered from the kind and the few
parameters read back here (`texts.health_words`), never from the raw reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class HealthKind(StrEnum):
    """Why an agent has its health; a change of kind is news, a change of wording is not."""

    OK = "ok"
    MISSING = "missing"
    CRASH_LOOP = "crash_loop"
    GAVE_UP = "gave_up"  # crash-looped too long, so the manager stopped it
    STOPPED = "stopped"
    NOT_READY = "not_ready"  # {minutes}
    NOT_ANSWERING = "not_answering"
    TOKEN = "token"
    WEBHOOK = "webhook"
    BACKLOG = "backlog"  # {count}
    LLM_KEY = "llm_key"
    LLM_RATE_LIMIT = "llm_rate_limit"


class CrashCause(StrEnum):
    """Why a workload keeps stopping, as far as the backend tells."""

    OUT_OF_MEMORY = "out-of-memory"
    NO_IMAGE = "no-image"  # the runtime's image cannot be pulled
    CANNOT_START = "cannot-start"  # the container cannot be created or run
    CRASHED = "crashed"  # it starts and exits (or the backend says no more)


# The backends' waiting reasons (Kubernetes) that name a cause besides a crash.
_NO_IMAGE = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName")
_CANNOT_START = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
_RESTARTS = re.compile(r"restarted (\d+) times")
_FIRST_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Crash:
    cause: CrashCause
    restarts: int = 0


def crash_of(reason: str | None) -> Crash:
    """The cause and restart count in a backend's crash reason (backends/kubernetes.py
    `_stuck_reason`, backends/local.py `_record_death`); an unknown one is a crash."""
    text = reason or ""
    found = _RESTARTS.search(text)
    restarts = int(found.group(1)) if found else 0
    if "OOMKilled" in text:
        return Crash(CrashCause.OUT_OF_MEMORY, restarts)
    if any(word in text for word in _NO_IMAGE):
        return Crash(CrashCause.NO_IMAGE, restarts)
    if any(word in text for word in _CANNOT_START):
        return Crash(CrashCause.CANNOT_START, restarts)
    return Crash(CrashCause.CRASHED, restarts)


def count_in(reason: str | None) -> int:
    """The number a verdict's reason starts from ("12 messages are waiting…", "not ready
    after 5 minutes"): what the words of NOT_READY and BACKLOG need."""
    found = _FIRST_NUMBER.search(reason or "")
    return int(found.group(0)) if found else 0
