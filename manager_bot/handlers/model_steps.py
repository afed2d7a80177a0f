"""The steps of choosing a model that the deploy wizard and the card's "Change model"
share: the typed model id and the user's own endpoint (no Router of its own)."""

from __future__ import annotations

from html import escape

from manager_bot import texts
from manager_bot.gateway.endpoints import EndpointGuard, normalize_base_url
from manager_bot.services.providers import Provider

OWN_ENDPOINT_EXAMPLE = "llama3.1:8b"


def model_name_question(provider: Provider | None) -> str:
    """Asks for a model id; `None` is the user's own endpoint."""
    if provider is None:
        return texts.ASK_MODEL_NAME.format(provider="your endpoint", example=OWN_ENDPOINT_EXAMPLE)
    example = provider.models[-1] if provider.models else OWN_ENDPOINT_EXAMPLE
    return texts.ASK_MODEL_NAME.format(provider=escape(provider.label), example=escape(example))


async def checked_endpoint(text: str, guard: EndpointGuard) -> str:
    """The endpoint's base URL, checked for shape and address now for early words; the
    gateway checks it again on every request (it is the only one that connects to it).
    Raises EndpointRefused with a reason fit to show."""
    url = normalize_base_url(text)
    await guard.check_resolved(url)
    return url
