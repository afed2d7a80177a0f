"""Keep secrets out of logs: a filter that redacts token- and key-shaped text everywhere.

Installed on the root handlers, so it sees records from every logger (aiohttp,
openai, httpx and ours), including formatted exception text. Shared with the
manager, which imports it without pulling in anything heavy.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_SHAPES = re.compile(
    r"\d{5,15}:[A-Za-z0-9_-]{30,}"  # Telegram bot tokens
    r"|sk-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys
    r"|sk-ant-[A-Za-z0-9_-]{16,}"  # Anthropic keys
    r"|AIza[A-Za-z0-9_-]{30,}"  # Google API keys
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every secret-shaped string replaced."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    return _SHAPES.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets redacted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = redact(message, self._secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self._secrets)
        return True


def install_redaction(secrets: Iterable[str] = (), *, level: int = logging.INFO) -> None:
    """Configure root logging (if not yet) and redact on every root handler."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    redacting = RedactingFilter(secrets)
    for handler in root.handlers:
        for existing in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(existing)
        handler.addFilter(redacting)
