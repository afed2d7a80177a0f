"""What a message carries besides text: an image to show the model, a sound to transcribe.

Pure functions of the update: which file to download and whether to refuse it
before downloading anything. Images reach the model inline, as a base64 `data:`
URL: a Telegram file URL would hand the bot token to the provider.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]

# What OpenAI-compatible vision models accept; other image/* documents are refused.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
# Telegram's getFile serves at most 20 MB; transcription endpoints take up to 25 MB.
MAX_SOUND_BYTES = 20 * 1024 * 1024
# The transcription endpoint picks the decoder by the file name's extension.
SOUND_EXTENSIONS = {
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/m4a": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/webm": ".webm",
    "audio/flac": ".flac",
}


class MediaRefused(Exception):
    """A file refused before download; `kind` names the words the user gets."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class MediaPolicy:
    vision: bool  # the model sees images (LLM_VISION)
    max_image_bytes: int
    max_voice_seconds: int


@dataclass(frozen=True)
class Image:
    file_id: str
    mime_type: str


@dataclass(frozen=True)
class Sound:
    file_id: str
    file_name: str


def image_in(message: JsonDict, *, max_bytes: int) -> Image | None:
    """The photo (its largest size under `max_bytes`) or image document of a message."""
    photo = message.get("photo")
    if isinstance(photo, list) and photo:
        fitting = [
            size
            for size in photo
            if isinstance(size, dict) and int(size.get("file_size") or 0) <= max_bytes
        ]
        if not fitting:
            raise MediaRefused("image_too_big")
        largest = max(
            fitting, key=lambda size: int(size.get("width", 0)) * int(size.get("height", 0))
        )
        return Image(file_id=str(largest["file_id"]), mime_type="image/jpeg")  # photos are JPEG
    document = message.get("document")
    if isinstance(document, dict) and str(document.get("mime_type", "")).startswith("image/"):
        if document["mime_type"] not in IMAGE_TYPES:
            raise MediaRefused("image_type")
        if int(document.get("file_size") or 0) > max_bytes:
            raise MediaRefused("image_too_big")
        return Image(file_id=str(document["file_id"]), mime_type=document["mime_type"])
    return None


def sound_in(message: JsonDict, *, max_seconds: int) -> Sound | None:
    """The voice note or audio file of a message, refused above `max_seconds`."""
    for kind in ("voice", "audio"):
        sound = message.get(kind)
        if not isinstance(sound, dict):
            continue
        if int(sound.get("duration") or 0) > max_seconds:
            raise MediaRefused("voice_too_long")
        if int(sound.get("file_size") or 0) > MAX_SOUND_BYTES:
            raise MediaRefused("voice_too_long")
        extension = SOUND_EXTENSIONS.get(str(sound.get("mime_type", "")), ".ogg")
        name = str(sound.get("file_name") or f"{kind}{extension}")
        return Sound(file_id=str(sound["file_id"]), file_name=name)
    return None


def image_part(image: Image, data: bytes) -> JsonDict:
    """A chat message content part carrying the image itself."""
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{image.mime_type};base64,{encoded}"}}
