"""Where voice messages are transcribed, and what a second of audio costs an agent.

Transcription is a platform service, whatever model an agent chats with: the
first provider whose API has `/audio/transcriptions` and which has a platform
key (OpenAI) transcribes with TRANSCRIPTION_MODEL. A user's own key is never
used for it: it may belong to a provider without the endpoint.

Budgets count tokens, so audio is charged at a fixed rate per second
(TRANSCRIPTION_TOKENS_PER_SECOND). The seconds are those the provider reports
(whisper-1 answers `usage: {"type": "duration", "seconds": …}`); a provider that
reports none is charged an estimate from the file's size. The estimate also
sizes the budget reservation at admission.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from manager_bot.services.providers import Provider

# Telegram voice notes are Opus at 16-32 kbit/s; 4 kB a second is their upper end, so
# the estimate errs towards more seconds for voice (and fewer for richer music files).
AUDIO_BYTES_PER_SECOND = 4000


@dataclass(frozen=True)
class Transcriber:
    url: str
    headers: dict[str, str]  # the platform key inside: never logged
    model: str


def transcriber_for(providers: tuple[Provider, ...], model: str) -> Transcriber | None:
    """The platform's transcription endpoint, or None when voice cannot be transcribed."""
    if not model:
        return None
    for provider in providers:
        if provider.transcription and provider.platform_key and provider.base_url:
            key = provider.platform_key.get_secret_value()
            return Transcriber(
                url=f"{provider.base_url.rstrip('/')}/audio/transcriptions",
                headers={"Authorization": f"Bearer {key}"},
                model=model,
            )
    return None


def estimated_seconds(size: int) -> int:
    return max(1, math.ceil(size / AUDIO_BYTES_PER_SECOND))


def answer_of(raw: bytes) -> tuple[str, float | None] | None:
    """The transcript and the seconds reported, from a provider's JSON answer."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("text"), str):
        return None
    usage = document.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        seconds = None
    return document["text"], seconds
