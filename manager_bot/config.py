"""The manager's settings: exactly the environment contract of ARCHITECTURE.md."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from manager_bot.event_loop import EventLoop

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/hatchbot.db"
DEFAULT_AGENT_IMAGE = "ghcr.io/hatchbot/hatchbot:latest"
GATEWAY_SERVICE = "hatchbot-llm-gateway"  # k8s/base/llm-gateway.yaml
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")  # Telegram's secret_token


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _http_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class PlatformSettings(BaseSettings):
    """What the LLM gateway needs (`python -m manager_bot gateway`): the database, the
    keys that open the vault, the providers' platform keys, budgets and limits. It has
    no bot token: a gateway pod cannot speak as the manager."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", hide_input_in_errors=True
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
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object per line"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="least severe level logged: DEBUG, INFO, WARNING or ERROR"
    )
    event_loop: EventLoop = Field(
        default="uvloop",
        description="event loop of the manager and the gateway: uvloop (asyncio's own where "
        "uvloop is not installed), or asyncio",
    )
    gateway_host: str = Field(
        default="127.0.0.1", description="address the LLM gateway listens on (0.0.0.0 in a pod)"
    )
    gateway_port: int = Field(
        default=9190, ge=0, le=65535, description="port of the LLM gateway (0: any free port)"
    )
    agent_daily_token_budget: int = Field(
        default=200_000, ge=0, description="tokens an agent may use per UTC day (admins raise it)"
    )
    gateway_max_tokens: int = Field(
        default=1024, ge=16, le=128_000, description="cap on max_tokens of one completion"
    )
    gateway_user_rate_per_minute: float = Field(
        default=20.0, gt=0, description="requests a minute one chat user may cause, per agent"
    )
    gateway_user_burst: int = Field(
        default=5, ge=1, description="requests one chat user may make at once before the rate"
    )
    gateway_agent_concurrency: int = Field(
        default=8, ge=1, description="completions one agent may have in flight at once"
    )
    transcription_model: str = Field(
        default="whisper-1",
        description="model voice messages are transcribed with, at the platform's OpenAI "
        "provider; empty: agents answer that they cannot listen",
    )
    transcription_tokens_per_second: int = Field(
        default=100, ge=0, le=100_000, description="tokens one second of transcribed audio costs"
    )
    gateway_flush_seconds: float = Field(
        default=1.0, gt=0, le=60, description="how often counted usage is written to the database"
    )
    gateway_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="how long the gateway trusts an agent's stored row"
    )
    gateway_allowed_endpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="internal hosts (host or host:port) users' own endpoints may use",
    )
    k8s_cluster_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="pod and service CIDRs: refused as endpoints and egress"
    )

    @field_validator(
        "encryption_keys", "gateway_allowed_endpoints", "k8s_cluster_cidrs", mode="before"
    )
    @classmethod
    def _platform_lists(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("k8s_cluster_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 10.0.0.0/8") from None
        return value

    @field_validator("openai_base_url", "azure_openai_endpoint")
    @classmethod
    def _provider_url(cls, value: str | None) -> str | None:
        return _http_url(value)

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

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.get_secret_value().startswith("sqlite")

    def secret_values(self) -> list[str]:
        """Every secret setting's value, for the log redaction filter."""
        values = [key.get_secret_value() for key in self.encryption_keys]
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and name != "database_url":
                values.append(value.get_secret_value())
        url = self.database_url.get_secret_value()
        if "@" in url:  # only a URL with credentials holds a secret
            values.append(url)
        return [value for value in values if value]


class ManagerSettings(PlatformSettings):
    """Configuration of `python -m manager_bot`, read from the environment."""

    manager_bot_token: SecretStr = Field(description="the manager bot's token")
    admin_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="comma-separated Telegram user ids with admin rights"
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
    gateway_url: str | None = Field(
        default=None,
        description="LLM base URL agents use (the gateway's Service); unset: the in-process one",
    )
    agent_image: str = Field(
        default=DEFAULT_AGENT_IMAGE, description="runtime image for agent pods"
    )
    redis_url: SecretStr | None = Field(
        default=None, description="optional: FSM storage in Redis instead of the database"
    )
    health_interval: int = Field(default=30, ge=1, description="seconds between health sweeps")
    memory_idle_days: int = Field(
        default=30, ge=1, le=3650,
        description="days after which an agent's idle conversation with a chat is forgotten",
    )  # fmt: skip
    max_agents_per_user: int = Field(default=3, ge=0, description="quota of agents per user")
    card_edit_timeout: float = Field(
        default=600.0,
        gt=0,
        description="seconds a card's pending edit (prompt, model, key) waits for its answer",
    )
    broadcast_rate: float = Field(
        default=30.0, gt=0, le=1000, description="broadcast messages per second, overall"
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address of /metrics, /healthz and /readyz (0.0.0.0 in a pod)",
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="port of /metrics, /healthz, /readyz; 0: off"
    )
    # Webhook mode and several replicas (README "Webhook mode and several replicas").
    manager_webhook: bool = Field(
        default=False, description="serve Telegram's webhook instead of polling (several replicas)"
    )
    manager_webhook_secret: SecretStr | None = Field(
        default=None,
        description="secret token Telegram sends with each update (1-256 of A-Z a-z 0-9 _ -)",
    )
    manager_webhook_host: str = Field(
        default="127.0.0.1", description="address the webhook listener binds (0.0.0.0 in a pod)"
    )
    manager_webhook_port: int = Field(
        default=8081, ge=0, le=65535, description="port of the webhook listener"
    )
    manager_replicas: int | None = Field(
        default=None, ge=1,
        description="manager processes that serve at once; 1 allows webhook mode without Redis",
    )  # fmt: skip

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("telegram_api_url", "public_url", "gateway_url")
    @classmethod
    def _manager_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="after")
    def _public_url_for_kubernetes(self) -> ManagerSettings:
        if self.backend == "kubernetes" and not self.public_url:
            raise ValueError("PUBLIC_URL is required when BACKEND=kubernetes")
        return self

    @field_validator("manager_webhook_secret")
    @classmethod
    def _telegram_secret_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's own rule for secret_token; the value is never echoed back.
        if value is not None and not _SECRET_TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_mode(self) -> ManagerSettings:
        if not self.manager_webhook:
            if self.manager_replicas is not None and self.manager_replicas > 1:
                raise ValueError("MANAGER_REPLICAS above 1 needs MANAGER_WEBHOOK=true")
            return self
        if not self.public_url:
            raise ValueError("PUBLIC_URL is required when MANAGER_WEBHOOK=true")
        if self.manager_webhook_secret is None:
            raise ValueError("MANAGER_WEBHOOK_SECRET is required when MANAGER_WEBHOOK=true")
        if self.redis_url is None and self.manager_replicas != 1:
            # Per-user order, wizard state and duplicate checks are shared through Redis.
            raise ValueError(
                "REDIS_URL is required when MANAGER_WEBHOOK=true "
                "(or set MANAGER_REPLICAS=1 to run exactly one manager)"
            )
        return self

    @property
    def agents_gateway_url(self) -> str:
        """The LLM base URL agents are given: GATEWAY_URL, else the gateway's Service on
        Kubernetes, else the manager's in-process gateway."""
        if self.gateway_url:
            return self.gateway_url
        if self.backend == "kubernetes":
            return f"http://{GATEWAY_SERVICE}.{self.k8s_manager_namespace}.svc.cluster.local/v1"
        return f"http://127.0.0.1:{self.gateway_port}/v1"
