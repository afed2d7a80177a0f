"""The LLM providers a user can pick, built from the platform's settings.

Every provider speaks the OpenAI chat-completions protocol (Anthropic and
Gemini through their OpenAI-compatible endpoints), so an agent needs only a
base URL, a model and a key. A provider with a platform key needs nothing from
the user; without one the wizard asks for the user's own key.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from manager_bot.config import ManagerSettings


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
        return self.platform_key is None


def available_providers(settings: ManagerSettings) -> tuple[Provider, ...]:
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
    return tuple(providers)


def find_provider(providers: tuple[Provider, ...], name: str) -> Provider | None:
    return next((provider for provider in providers if provider.name == name), None)
