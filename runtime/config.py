"""The runtime's settings: the runtime environment contract of ARCHITECTURE.md."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Configuration of `python -m runtime`, read from the environment."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    bot_token: SecretStr = Field(description="the agent bot's Telegram token")
    agent_id: str = Field(
        description="the agent's id (route /webhook/{AGENT_ID})", pattern=r"^[a-z0-9-]{1,40}$"
    )
    llm_model: str = Field(description="model name sent to the LLM")
    llm_base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (Azure: the resource endpoint)"
    )
    llm_api_key: SecretStr | None = Field(
        default=None, description="the agent's gateway credential (never a provider key)"
    )
    llm_provider: Literal["openai", "azure"] = Field(
        default="openai", description="openai (any compatible endpoint) or azure"
    )
    llm_api_version: str = Field(default="2024-10-21", description="Azure OpenAI API version")
    system_prompt: str = Field(default="You are a helpful assistant.", description="system prompt")
    system_prompt_file: str | None = Field(
        default=None,
        description="file holding the system prompt (mounted from the agent's Secret); wins",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="X-Telegram-Bot-Api-Secret-Token expected on webhooks"
    )
    mode: Literal["webhook", "polling"] = Field(default="webhook", description="webhook or polling")
    host: str = Field(default="0.0.0.0", description="address the HTTP server binds")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP port")
    telegram_api_url: str = Field(
        default="https://api.telegram.org", description="Bot API base URL"
    )
    history_limit: int = Field(
        default=20, ge=0, le=500, description="turns of history kept per chat"
    )
    memory_url: str | None = Field(
        default=None,
        description="where conversations are kept (the LLM gateway's /v1/memory, with "
        "LLM_API_KEY); unset = in this process only, forgotten on restart",
    )
    memory_idle_days: int = Field(
        default=30, ge=1, le=3650, description="days after which an idle chat is forgotten"
    )
    llm_vision: bool = Field(
        default=True,
        description="whether the model can see images (the manager sets it from its catalogue)",
    )
    max_image_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=1,
        # base64 makes it 4/3 larger: 6 MiB is 8 MiB in the request, under the gateway's 10.
        le=6 * 1024 * 1024,
        description="largest photo or image file sent to the model; larger ones are refused",
    )
    max_voice_seconds: int = Field(
        default=120, ge=1, le=600, description="longest voice message or audio transcribed"
    )
    # Tools over MCP (runtime/tools.py): the gateway proxies each named server.
    mcp_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated names of the agent's MCP servers; empty = no tools",
    )
    mcp_base_url: str | None = Field(
        default=None,
        description="server NAME is reached at MCP_BASE_URL/NAME (with LLM_API_KEY); "
        "default LLM_BASE_URL/mcp",
    )
    mcp_max_steps: int = Field(
        default=5, ge=1, le=20, description="rounds of tool calls per answer, at most"
    )
    mcp_call_timeout: float = Field(
        default=20.0, gt=0, le=300, description="seconds one tool call may take"
    )
    mcp_max_result_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        le=1024 * 1024,
        description="a tool result longer than this is cut (marked) before the model sees it",
    )

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _server_names(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for name in value:
                if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", name):
                    raise ValueError("names must be lowercase letters, digits and '-' (1-32)")
            return list(dict.fromkeys(value))
        return value

    @model_validator(mode="after")
    def _mcp_base(self) -> RuntimeSettings:
        if self.mcp_base_url is not None:
            if not self.mcp_base_url.startswith(("http://", "https://")):
                raise ValueError("MCP_BASE_URL must be an http:// or https:// URL")
            self.mcp_base_url = self.mcp_base_url.rstrip("/")
        elif self.mcp_servers and self.llm_base_url:
            self.mcp_base_url = f"{self.llm_base_url}/mcp"
        if self.mcp_servers and self.mcp_base_url is None:
            raise ValueError("MCP_SERVERS needs MCP_BASE_URL or LLM_BASE_URL (the gateway)")
        return self

    allowed_user_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="comma-separated user ids; empty = everyone"
    )
    log_file: str | None = Field(
        default=None,
        description="file the process logs to (stdout and stderr too), rotated by size; "
        "unset = stderr",
    )
    log_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="size at which LOG_FILE is rotated"
    )
    log_backups: int = Field(default=3, ge=1, le=100, description="rotated LOG_FILEs kept")

    @field_validator("allowed_user_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("telegram_api_url", "llm_base_url", "memory_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _prompt_from_file(self) -> RuntimeSettings:
        """The prompt is data, read as written: never an env value the kubelet expands."""
        if self.system_prompt_file:
            try:
                with open(self.system_prompt_file, encoding="utf-8", newline="") as handle:
                    self.system_prompt = handle.read()
            except (OSError, UnicodeDecodeError):
                raise ValueError(
                    "SYSTEM_PROMPT_FILE cannot be read (is the agent's Secret mounted?)"
                ) from None
        return self

    @model_validator(mode="after")
    def _secret_for_webhooks(self) -> RuntimeSettings:
        if self.mode == "webhook" and self.webhook_secret is None:
            raise ValueError("WEBHOOK_SECRET is required when MODE=webhook")
        if self.llm_provider == "azure" and not self.llm_base_url:
            raise ValueError(
                "LLM_BASE_URL (the Azure endpoint) is required when LLM_PROVIDER=azure"
            )
        if self.memory_url and self.llm_api_key is None:
            raise ValueError("MEMORY_URL needs LLM_API_KEY (the gateway credential)")
        return self
