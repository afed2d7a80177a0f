"""The manager's settings: exactly the environment contract of ARCHITECTURE.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/hatchbot.db"
DEFAULT_AGENT_IMAGE = "ghcr.io/hatchbot/hatchbot:latest"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ManagerSettings(BaseSettings):
    """Configuration of `python -m manager_bot`, read from the environment."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    manager_bot_token: SecretStr = Field(description="the manager bot's token")
    admin_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="comma-separated Telegram user ids with admin rights"
    )
    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        description="SQLAlchemy async URL",
        json_schema_extra={"public_default": True},
    )
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Fernet keys; the first encrypts, all decrypt",
    )
    backend: Literal["local", "kubernetes"] = Field(
        default="local", description="local or kubernetes"
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org", description="Bot API base URL"
    )
    public_url: str | None = Field(
        default=None, description="public HTTPS base for /webhook/{agent_id} (kubernetes)"
    )
    k8s_namespace: str = Field(default="agents", description="namespace for agents")
    k8s_router: Literal["istio", "gateway-api", "none"] = Field(
        default="istio", description="istio, gateway-api or none"
    )
    k8s_gateway: str = Field(
        default="hatchbot-system/hatchbot-gateway",
        description="namespace/name of the Istio or Gateway API Gateway that routes webhooks",
    )
    k8s_ingress_namespace: str = Field(
        default="istio-system",
        description="namespace of the ingress gateway pods (allowed in by NetworkPolicy)",
    )
    k8s_manager_namespace: str = Field(
        default="hatchbot-system",
        description="namespace the manager runs in (allowed in to probe agents)",
    )
    agent_image: str = Field(
        default=DEFAULT_AGENT_IMAGE, description="runtime image for agent pods"
    )
    redis_url: SecretStr | None = Field(
        default=None, description="optional: FSM storage in Redis instead of the database"
    )
    health_interval: int = Field(default=30, ge=1, description="seconds between health sweeps")
    max_agents_per_user: int = Field(default=3, ge=0, description="quota of agents per user")
    openai_api_key: SecretStr | None = Field(default=None, description="platform key for OpenAI")
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL for the OpenAI provider"
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None, description="platform key for Anthropic"
    )
    gemini_api_key: SecretStr | None = Field(default=None, description="platform key for Gemini")
    azure_openai_api_key: SecretStr | None = Field(
        default=None, description="platform key for Azure OpenAI"
    )
    azure_openai_endpoint: str | None = Field(
        default=None, description="Azure OpenAI endpoint, https://<resource>.openai.azure.com"
    )
    azure_openai_api_version: str = Field(
        default="2024-10-21", description="Azure OpenAI API version"
    )
    broadcast_rate: float = Field(
        default=30.0, gt=0, le=1000, description="broadcast messages per second, overall"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object per line"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address of /metrics, /healthz and /readyz (0.0.0.0 in a pod)",
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="port of /metrics, /healthz, /readyz; 0: off"
    )

    @field_validator("admin_ids", "encryption_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("telegram_api_url", "public_url", "openai_base_url", "azure_openai_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None if value == "" else value
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if "://" not in url:
            raise ValueError(
                "must be an SQLAlchemy URL such as sqlite+aiosqlite:///data/hatchbot.db"
            )
        scheme = url.split("://", 1)[0]
        if scheme in ("sqlite", "postgresql", "postgres"):
            raise ValueError(
                "must name an async driver: sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        return value

    @model_validator(mode="after")
    def _public_url_for_kubernetes(self) -> ManagerSettings:
        if self.backend == "kubernetes" and not self.public_url:
            raise ValueError("PUBLIC_URL is required when BACKEND=kubernetes")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.get_secret_value().startswith("sqlite")
