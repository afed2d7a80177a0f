"""The LLM providers a user can pick, built from the platform's settings.

Every provider speaks the OpenAI chat-completions protocol (Anthropic and
Gemini through their OpenAI-compatible endpoints), so an agent needs only a
base URL, a model and a key. A provider with a platform key needs nothing from
the user; without one the wizard asks for the user's own key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import SecretStr

from manager_bot.config import PlatformSettings

CUSTOM = "custom"  # a user's own OpenAI-compatible endpoint (Ollama, vLLM, OpenRouter...)
# Model ids a user may type ("Other model..."): what providers use, nothing that breaks a URL.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


@dataclass(frozen=True)
class Provider:
    name: str  # stored on the agent: openai | anthropic | gemini | azure
    label: str
    base_url: str | None
    models: tuple[str, ...]
    platform_key: SecretStr | None = None
    runtime_provider: str = "openai"  # the runtime's LLM_PROVIDER
    api_version: str | None = None

    @property
    def needs_user_key(self) -> bool:
        """A user's own endpoint may need no key at all (a local Ollama)."""
        return self.platform_key is None and self.name != CUSTOM

    @property
    def is_custom(self) -> bool:
        return self.name == CUSTOM


def available_providers(settings: PlatformSettings) -> tuple[Provider, ...]:
    """Providers in the order the wizard shows them; Azure only when it has an endpoint."""
    providers = [
        Provider(
            name="openai",
            label="OpenAI",
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            models=("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"),
            platform_key=settings.openai_api_key,
        ),
        Provider(
            name="anthropic",
            label="Anthropic",
            base_url="https://api.anthropic.com/v1/",
            models=("claude-haiku-4-5", "claude-sonnet-4-5"),
            platform_key=settings.anthropic_api_key,
        ),
        Provider(
            name="gemini",
            label="Google Gemini",
            base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
            models=("gemini-2.5-flash", "gemini-2.5-pro"),
            platform_key=settings.gemini_api_key,
        ),
    ]
    if settings.azure_openai_endpoint:
        providers.append(
            Provider(
                name="azure",
                label="Azure OpenAI",
                base_url=settings.azure_openai_endpoint,
                models=("gpt-4o-mini", "gpt-4o"),
                platform_key=settings.azure_openai_api_key,
                runtime_provider="azure",
                api_version=settings.azure_openai_api_version,
            )
        )
    providers.append(
        Provider(name=CUSTOM, label="My own endpoint", base_url=None, models=(), platform_key=None)
    )
    return tuple(providers)


def is_model_id(text: str) -> bool:
    return MODEL_ID.fullmatch(text) is not None


def find_provider(providers: tuple[Provider, ...], name: str) -> Provider | None:
    return next((provider for provider in providers if provider.name == name), None)
