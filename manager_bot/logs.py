"""Logging for the manager: text or one JSON object per line, a request id, secrets redacted.

The request id is set per update (and per background job) in a context
variable, so every line logged while handling it carries the same id; the
apology a user sees after an unexpected error quotes it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

from runtime.redaction import install_redaction

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Libraries whose INFO lines say nothing the manager's own lines do not: APScheduler's
# "Running job ..." and "... executed successfully" come on every run of every job.
QUIET_LOGGERS = {"apscheduler": logging.WARNING}


def new_request_id() -> str:
    request_id = secrets.token_hex(4)
    REQUEST_ID.set(request_id)
    return request_id


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    log_format: str, secrets_to_hide: Iterable[str] = (), *, level: int | str = logging.INFO
) -> None:
    """Root logging for the whole process: format, request ids, then redaction last.

    `level` is LOG_LEVEL (a name such as "DEBUG", or a number)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET_LOGGERS.items():  # never louder than LOG_LEVEL either
        logging.getLogger(name).setLevel(max(quiet, root.level))
    # The redacting filter rewrites the message and exception text before formatting.
    install_redaction(secrets_to_hide)
