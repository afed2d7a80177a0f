"""A fake OpenAI-compatible server on 127.0.0.1, driven through the real `openai` SDK.

Chat completions (plain and SSE streaming, with usage), `/v1/models`, the Azure
deployment path, and injectable failures (401/429/500 with OpenAI-shaped
bodies) and latency. A user message with an image part is answered "I see an
image" (echo mode). `/v1/audio/transcriptions` takes multipart like OpenAI's and
"transcribes" the file as its bytes decoded as UTF-8, so a test's voice note
whose bytes are `hello from voice` says exactly that.

Tool calls: a request carrying `tools` takes the next scripted turn
(`script_tool_turns(ToolCalls(...), "text", ...)`), or the reply (a function may
return `ToolCalls`); the answer has `tool_calls` in the real API's non-streaming
and streaming forms. `tool_messages()` is every `tool` message the model was sent.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import BodyPartReader, web

from tests.fakes.loopback import serve_on_loopback

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class ToolCalls:
    """A model turn that calls tools: (name, arguments) pairs, and optional text."""

    calls: tuple[tuple[str, JsonDict], ...]
    text: str = ""

    @classmethod
    def of(cls, name: str, arguments: JsonDict | None = None, *, text: str = "") -> ToolCalls:
        return cls(((name, arguments or {}),), text)


Reply = str | Callable[[list[JsonDict]], "str | ToolCalls"]

_ERRORS = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    429: ("rate_limit_exceeded", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded."),
}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # authorization values left out
    body: JsonDict
    at: float
    finished_at: float | None = None


@dataclass
class _Failure:
    status: int
    times: int
    body: JsonDict | None


@dataclass
class FakeOpenAI:
    """State and behaviour of the fake; `url` is the SDK's `base_url` (ends in /v1)."""

    expected_key: str | None = None
    # Seconds before answering: a number, or a function of the request's messages.
    latency: float | Callable[[list[JsonDict]], float] = 0.0
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o")
    requests: list[RecordedRequest] = field(default_factory=list)
    url: str = ""
    root_url: str = ""
    _reply: Reply = "echo"
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    in_flight: int = 0
    # False: like a provider without the endpoint (404), e.g. an Anthropic-compatible one.
    transcription: bool = True
    # Turns for requests that carry `tools`, taken in order before the reply is used.
    tool_turns: deque[str | ToolCalls] = field(default_factory=deque)

    def reply_with(self, reply: Reply) -> None:
        """A fixed text, or a function of the request's messages."""
        self._reply = reply

    def script_tool_turns(self, *turns: str | ToolCalls) -> None:
        self.tool_turns.extend(turns)

    def tool_messages(self) -> list[JsonDict]:
        """Every `tool` message the model was sent, once each (history repeats them)."""
        seen: dict[str, JsonDict] = {}
        for body in self.chat_requests():
            for message in body.get("messages", []):
                if message.get("role") == "tool":
                    seen.setdefault(str(message.get("tool_call_id")), message)
        return list(seen.values())

    def fail_next(self, status: int, *, times: int = 1, body: JsonDict | None = None) -> None:
        self._failures.append(_Failure(status, times, body))

    def chat_requests(self) -> list[JsonDict]:
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    def image_parts(self) -> list[JsonDict]:
        """Every image part of every message the model was sent."""
        return [
            part
            for body in self.chat_requests()
            for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if part.get("type") == "image_url"
        ]

    def transcription_requests(self) -> list[JsonDict]:
        """Fields of each transcription request; the file as `file_name` and `file_bytes`."""
        return [r.body for r in self.requests if r.path.endswith("/audio/transcriptions")]

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)  # images inline, like OpenAI's
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        self._runner, self.root_url = await serve_on_loopback(app)
        self.url = f"{self.root_url}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- handlers ----------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        if self.expected_key is None:
            return None
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.expected_key in (bearer, request.headers.get("api-key")):
            return None
        return _error(401)

    async def _models(self, request: web.Request) -> web.Response:
        denied = self._authorised(request)
        if denied is not None:
            return denied
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "api-key")
        }
        recorded = RecordedRequest(request.path, headers, body, time.monotonic())
        self.requests.append(recorded)
        denied = self._authorised(request)
        if denied is not None:
            return denied
        failure = self._next_failure()
        if failure is not None:
            return _error(failure.status, failure.body)
        self.in_flight += 1
        try:
            messages = body.get("messages", [])
            delay = self.latency(messages) if callable(self.latency) else self.latency
            if delay:
                await asyncio.sleep(delay)
            answer = self._answer_with_tools(body)
            if isinstance(answer, ToolCalls):
                calls = _tool_call_list(answer)
                if body.get("stream"):
                    return await self._stream_tool_calls(request, body, answer.text, calls)
                return web.json_response(_completion(body, answer.text, calls))
            if body.get("stream"):
                return await self._stream(request, body, answer)
            return web.json_response(_completion(body, answer))
        finally:
            self.in_flight -= 1
            recorded.finished_at = time.monotonic()

    async def _transcribe(self, request: web.Request) -> web.Response:
        fields: JsonDict = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            payload = bytes(await part.read())
            if part.filename:
                fields.update(file_name=part.filename, file_bytes=payload)
            else:
                fields[part.name] = payload.decode()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("authorization", "api-key")
        }
        self.requests.append(RecordedRequest(request.path, headers, fields, time.monotonic()))
        denied = self._authorised(request)
        if denied is not None:
            return denied
        if not self.transcription:
            return web.json_response(
                {"error": {"message": "Not found", "type": "invalid_request_error"}}, status=404
            )
        failure = self._next_failure()
        if failure is not None:
            return _error(failure.status, failure.body)
        raw = fields.get("file_bytes", b"")
        text = raw.decode("utf-8", errors="replace")
        # whisper-1 reports the audio's duration; here one second per 4 bytes.
        usage = {"type": "duration", "seconds": max(1, len(raw) // 4)}
        return web.json_response({"text": text, "usage": usage})

    def _next_failure(self) -> _Failure | None:
        for failure in self._failures:
            if failure.times > 0:
                failure.times -= 1
                return failure
        return None

    def _answer_with_tools(self, body: JsonDict) -> str | ToolCalls:
        """A scripted turn when the request offers tools; tool calls only if it does."""
        offered = bool(body.get("tools")) and body.get("tool_choice") != "none"
        if offered and self.tool_turns:
            return self.tool_turns.popleft()
        answer = self._answer(body.get("messages", []))
        if isinstance(answer, ToolCalls) and not offered:
            return answer.text  # the real API never calls a tool it was not offered
        return answer

    def _answer(self, messages: list[JsonDict]) -> str | ToolCalls:
        if callable(self._reply):
            return self._reply(messages)
        if self._reply != "echo":
            return self._reply
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last_user.get("content", "")
        if isinstance(content, list):
            words = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            if any(part.get("type") == "image_url" for part in content):
                return f"I see an image: {words}" if words else "I see an image"
            return f"echo: {words}"
        return f"echo: {content}"

    async def _stream(self, request: web.Request, body: JsonDict, text: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", body.get("model", "")
        words = text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            delta: JsonDict = {"content": piece}
            if index == 0:
                delta["role"] = "assistant"
            await _send_event(response, _chunk(ident, model, delta, None))
        await _send_event(response, _chunk(ident, model, {}, "stop"))
        return await _end_stream(response, body, text, ident, model)

    async def _stream_tool_calls(
        self, request: web.Request, body: JsonDict, text: str, calls: list[JsonDict]
    ) -> web.StreamResponse:
        """As OpenAI streams them: any text first, then each call's id and name in one
        chunk and its arguments in pieces; finish_reason "tool_calls"."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", body.get("model", "")
        first: JsonDict = {"role": "assistant", "content": text or None}
        await _send_event(response, _chunk(ident, model, first, None))
        for index, call in enumerate(calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await _send_event(response, _chunk(ident, model, {"tool_calls": [head]}, None))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 8):
                piece = {"index": index, "function": {"arguments": arguments[start : start + 8]}}
                await _send_event(response, _chunk(ident, model, {"tool_calls": [piece]}, None))
        await _send_event(response, _chunk(ident, model, {}, "tool_calls"))
        return await _end_stream(response, body, text, ident, model)


async def _end_stream(
    response: web.StreamResponse, body: JsonDict, text: str, ident: str, model: str
) -> web.StreamResponse:
    """The usage chunk when asked for (`stream_options.include_usage`), then [DONE]."""
    if (body.get("stream_options") or {}).get("include_usage"):
        usage_chunk = _chunk(ident, model, None, None)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = _usage(body, text)
        await _send_event(response, usage_chunk)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _tool_call_list(answer: ToolCalls) -> list[JsonDict]:
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:16]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        for name, arguments in answer.calls
    ]


def _error(status: int, body: JsonDict | None = None) -> web.Response:
    kind, code, message = _ERRORS.get(status, ("server_error", None, "error"))
    payload = body or {"error": {"message": message, "type": kind, "param": None, "code": code}}
    headers = {"retry-after": "0"} if status == 429 else None
    return web.json_response(payload, status=status, headers=headers)


def _usage(body: JsonDict, text: str) -> JsonDict:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(body: JsonDict, text: str, calls: list[JsonDict] | None = None) -> JsonDict:
    message: JsonDict = {"role": "assistant", "content": text}
    if calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": calls}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": _usage(body, text),
    }


def _chunk(ident: str, model: str, delta: JsonDict | None, finish: str | None) -> JsonDict:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


async def _send_event(response: web.StreamResponse, payload: JsonDict) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    """A started fake OpenAI-compatible server; stopped after the test."""
    async with FakeOpenAI() as fake:
        yield fake
