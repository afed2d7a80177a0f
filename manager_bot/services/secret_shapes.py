"""What a pasted secret looks like: tokens and keys that must not stay in a chat.

Shapes, not proof: a false alarm costs the user one message, a miss leaves a
credential in the chat history (and, in a prompt, within reach of the bot's users).
"""

from __future__ import annotations

import re

# Not preceded by a character that can be part of the same word ("risk-free" is no key).
_START = r"(?<![A-Za-z0-9_-])"
SECRET_SHAPES = re.compile(
    _START
    + "(?:"
    + "|".join(
        (
            r"\d{6,12}:[A-Za-z0-9_-]{30,}",  # a Telegram bot token
            r"sk-ant-[A-Za-z0-9_-]{20,}",  # Anthropic
            r"sk-[A-Za-z0-9_-]{20,}",  # OpenAI (and sk-proj-...)
            r"AIza[0-9A-Za-z_-]{35}",  # Google
            r"hbgw_[A-Za-z0-9_-]{20,}",  # our gateway credentials
        )
    )
    + ")"
)


def contains_secret(text: str) -> bool:
    """True when `text` holds something shaped like a token or an API key."""
    return SECRET_SHAPES.search(text) is not None
