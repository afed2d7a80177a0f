"""Reading what passes through: the usage a completion reports, without holding it up."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Reported:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    found: bool = False

    def take(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            self.found = True


class UsageScanner:
    """Feeds on an SSE stream's raw chunks as they are forwarded; remembers the usage.

    Only `data:` lines that mention "usage" with a value are parsed: with
    `include_usage` providers send `"usage": null` on every chunk and the numbers
    once, at the end. Content bytes are counted too, for an estimate when a stream
    breaks before its usage arrives."""

    def __init__(self) -> None:
        self.reported = Reported()
        self.content_bytes = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        self.content_bytes += len(line)
        if b'"usage"' not in line or b'"usage":null' in line.replace(b" ", b""):
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if isinstance(event, dict):
            self.reported.take(event.get("usage"))


def reported_in_body(body: bytes) -> Reported:
    """The usage of a whole (non-streamed) completion."""
    reported = Reported()
    try:
        document = json.loads(body)
    except ValueError:
        return reported
    if isinstance(document, dict):
        reported.take(document.get("usage"))
    return reported


# What one image part is reserved at admission, whatever its bytes: providers charge
# by tiles, not by size (gpt-4o: at most ~1,100 tokens for a detailed image).
# The usage the provider reports is what is counted afterwards.
IMAGE_TOKENS_BOUND = 1_500


def prompt_bound(messages: list[Any]) -> int:
    """An upper bound of a prompt's tokens: a token is at least one byte of UTF-8,
    plus a few tokens of framing per message; an image part counts IMAGE_TOKENS_BOUND
    (its base64 bytes would reserve a whole day's budget for one photo)."""
    total = 8
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, list):
            total += sum(_part_bound(part) for part in content) + 6
            continue
        text = content if isinstance(content, str) else json.dumps(content)
        total += len(text.encode()) + 6
    return total


def _part_bound(part: Any) -> int:
    if isinstance(part, dict) and part.get("type") == "image_url":
        return IMAGE_TOKENS_BOUND
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return len(part["text"].encode()) + 2
    return len(json.dumps(part).encode())
