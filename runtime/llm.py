"""The LLM behind an agent, through the official openai SDK.

Any OpenAI-compatible endpoint (OpenAI, Anthropic's and Gemini's compatible
endpoints, Ollama, vLLM) or Azure OpenAI. Failures are reduced to a kind the
user can be told about; the SDK's messages never leave this module because
they can quote request details. Given `tools` (OpenAI's function format), a
streamed turn may end in tool calls, gathered from their streamed pieces.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from runtime.config import RuntimeSettings

REQUEST_TIMEOUT = 60.0
MAX_RETRIES = 2


CHAT_USER_HEADER = "X-Hatchbot-Chat-User"  # the gateway's per-user rate limit key
# The gateway's stable error codes, as kinds the chat has words for.
GATEWAY_CODES = {
    "daily_budget_exhausted": "budget",
    "user_rate_limited": "user_rate",
    "agent_disabled": "disabled",
    "transcription_unavailable": "no_voice",
}
# The gateway transcribes with the platform's model (TRANSCRIPTION_MODEL), whatever is asked.
TRANSCRIPTION_MODEL = "whisper-1"


class LlmError(Exception):
    """An LLM call failed; `kind` is auth, rate_limit, budget, user_rate, disabled, no_voice
    or other."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class ToolCall:
    """A function the model asked for; `arguments` is JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str = ""

    def as_message_part(self) -> dict[str, Any]:
        """The entry of the assistant message's `tool_calls` that the model is sent back."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _gather_tool_calls(deltas: Any, calls: dict[int, ToolCall]) -> None:
    """Streamed tool calls come in pieces keyed by `index`: the id and name first,
    then the arguments a few characters at a time."""
    for delta in deltas:
        call = calls.setdefault(delta.index, ToolCall(id="", name=""))
        if delta.id:
            call.id = delta.id
        function = delta.function
        if function is not None:
            if function.name:
                call.name += function.name
            if function.arguments:
                call.arguments += function.arguments


def build_client(settings: RuntimeSettings) -> openai.AsyncOpenAI:
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
    if settings.llm_provider == "azure":
        assert settings.llm_base_url is not None  # checked by the settings
        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.llm_base_url,
            api_key=key,
            api_version=settings.llm_api_version,
            timeout=REQUEST_TIMEOUT,
            max_retries=MAX_RETRIES,
            http_client=openai.DefaultAioHttpClient(timeout=REQUEST_TIMEOUT),
        )
    return openai.AsyncOpenAI(
        base_url=settings.llm_base_url,
        api_key=key,
        timeout=REQUEST_TIMEOUT,
        max_retries=MAX_RETRIES,
        # The SDK's documented aiohttp transport (the `openai[aiohttp]` extra): cheaper
        # per request than its default, and aiohttp is already the runtime's HTTP stack.
        http_client=openai.DefaultAioHttpClient(timeout=REQUEST_TIMEOUT),
    )


def classify(error: Exception) -> str:
    if isinstance(error, openai.APIStatusError):
        code = error.code if isinstance(error.code, str) else None
        if code in GATEWAY_CODES:
            return GATEWAY_CODES[code]
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
        return "auth"
    if isinstance(error, openai.RateLimitError):
        return "rate_limit"
    return "other"


class Llm:
    """Streams completions for a list of chat messages."""

    def __init__(self, *, client: openai.AsyncOpenAI, model: str) -> None:
        self._client = client
        self._model = model
        # `client.chat` imports the SDK's chat modules on first use (about 50 ms): pay it
        # at start-up, not in the first user's reply.
        self._completions = client.chat.completions

    async def close(self) -> None:
        await self._client.close()

    async def transcribe(
        self, audio: bytes, *, file_name: str, chat_user: int | None = None
    ) -> str:
        """The words of a voice message or audio file.

        `client.audio` imports the SDK's audio modules on first use: paid by the first
        voice message, not at start-up. A 404 or 501 means the endpoint has no
        transcription (the gateway's platform has none, or a provider lacks it)."""
        try:
            result = await self._client.audio.transcriptions.create(
                model=TRANSCRIPTION_MODEL,
                file=(file_name, audio),
                extra_headers={CHAT_USER_HEADER: str(chat_user)} if chat_user else None,
            )
        except openai.OpenAIError as error:
            if isinstance(error, openai.APIStatusError) and error.status_code in (404, 501):
                raise LlmError("no_voice") from None
            raise LlmError(classify(error)) from None
        return str(getattr(result, "text", "") or "")

    async def stream(
        self,
        messages: list[dict[str, Any]],
        usage: Usage,
        *,
        chat_user: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
        tool_calls: list[ToolCall] | None = None,
    ) -> AsyncIterator[str]:
        """Yields text pieces as they arrive; fills `usage` when the stream ends.

        `chat_user` (who wrote) lets the gateway limit each user's rate; it is a header
        the gateway strips, not the body's `user`, which would go on to the provider.
        With `tools`, the calls the model makes are appended to `tool_calls`
        (`tool_choice` "none": the model must answer in words)."""
        started = time.monotonic()
        body: dict[str, Any] = {"messages": messages}
        if tools:
            body["tools"] = tools  # plain dicts, like the messages: no SDK transform
            if tool_choice:
                body["tool_choice"] = tool_choice
        gathered: dict[int, ToolCall] = {}
        try:
            stream: Any = await self._completions.create(
                model=self._model,
                # The history goes in `extra_body` (same JSON field, it takes precedence):
                # the SDK's type-driven transform of `messages` walked every turn of
                # every request and was two thirds of the runtime's CPU at 200
                # updates/s (bench/runtime.py, py-spy). Plain role/content dicts need
                # no transform.
                messages=[],
                extra_body=body,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={CHAT_USER_HEADER: str(chat_user)} if chat_user else None,
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    usage.prompt_tokens = chunk.usage.prompt_tokens
                    usage.completion_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.tool_calls:
                    _gather_tool_calls(delta.tool_calls, gathered)
                if delta.content:
                    yield delta.content
        except openai.OpenAIError as error:
            raise LlmError(classify(error)) from None
        finally:
            usage.seconds = time.monotonic() - started
        if tool_calls is not None:
            tool_calls.extend(call for _, call in sorted(gathered.items()) if call.name)
