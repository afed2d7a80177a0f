"""What the wizard deletes on sight: tokens and keys, not words that look a bit like them."""

from __future__ import annotations

import pytest

from manager_bot.services.secret_shapes import contains_secret


@pytest.mark.parametrize(
    "text",
    [
        "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0",
        "my token is 7000000009:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA, thanks",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
        "key: sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
        "hbgw_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd",
    ],
)
def test_tokens_and_keys_are_secrets(text: str) -> None:
    assert contains_secret(text)


@pytest.mark.parametrize(
    "text",
    [
        "You are a friendly assistant. Keep answers under 200 words.",
        "risk-averseaaaaaaaaaaaaaaaaaaaaaaa investors",
        "https://openrouter.ai/api/v1",
        "gpt-4o-mini",
        "Meet at 10:30 on 2025-01-01",
        "sk-short",
    ],
)
def test_ordinary_text_is_not(text: str) -> None:
    assert not contains_secret(text)
