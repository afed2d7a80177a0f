"""The LLM providers a user can pick, built from the platform's settings.

Every provider speaks the OpenAI chat-completions protocol (Anthropic and
Gemini through their OpenAI-compatible endpoints), so an agent needs only a
base URL, a model and a key. A provider with a platform key needs nothing from
the user; without one the wizard asks for the user's own key.

Capabilities are listed per model: `vision` names the models that see images
(the runtime's LLM_VISION). A model not listed (typed as "Other model...", or
any model of a user's own endpoint) counts as blind: the agent then says
plainly it cannot see images, where sending one could fail the whole reply.
`transcription` marks a provider whose OpenAI-compatible API has
`/audio/transcriptions`; the gateway transcribes voice messages there.
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
    vision: frozenset[str] = frozenset()  # the models that see images
    transcription: bool = False  # has /audio/transcriptions (OpenAI's protocol)

    def sees_images(self, model: str) -> bool:
        return model in self.vision

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
            vision=frozenset({"gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"}),
            transcription=True,
        ),
        Provider(
            name="anthropic",
            label="Anthropic",
            base_url="https://api.anthropic.com/v1/",
            models=("claude-haiku-4-5", "claude-sonnet-4-5"),
            platform_key=settings.anthropic_api_key,
            vision=frozenset({"claude-haiku-4-5", "claude-sonnet-4-5"}),
        ),
        Provider(
            name="gemini",
            label="Google Gemini",
            base_url="https://generativelanguage.googleapis.com/v1beta/openai/",
            models=("gemini-2.5-flash", "gemini-2.5-pro"),
            platform_key=settings.gemini_api_key,
            vision=frozenset({"gemini-2.5-flash", "gemini-2.5-pro"}),
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
                vision=frozenset({"gpt-4o-mini", "gpt-4o"}),
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


def sees_images(providers: tuple[Provider, ...], provider_name: str, model: str) -> bool:
    """Whether an agent's model sees images; unknown providers and models do not."""
    provider = find_provider(providers, provider_name)
    return provider is not None and provider.sees_images(model)
