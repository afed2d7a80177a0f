"""The gateway's HTTP face: an OpenAI-compatible `/v1` for agents, health and metrics.

`python -m manager_bot gateway` serves it on its own (Kubernetes: its own
Deployment); with the local backend the manager serves it in-process on
127.0.0.1. Errors are OpenAI-shaped (`{"error": {"message", "type", "code"}}`),
with stable codes the runtime turns into plain words; a provider's own error
body never passes through, because it can quote part of the key.

`/v1/audio/transcriptions` turns an agent's voice messages into text at the
platform's transcription endpoint (see `transcription.py` for where, and how a
second of audio is charged); without one it answers 501
`transcription_unavailable`, which the agent words as "I can't listen yet".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from manager_bot.gateway.accounts import AccountBook, AgentAccount, Upstream
from manager_bot.gateway.endpoints import EndpointGuard, EndpointRefused, refusal_of
from manager_bot.gateway.ledger import Admission, UsageLedger
from manager_bot.gateway.limits import UserRateLimiter
from manager_bot.gateway.mcp_proxy import McpProxy
from manager_bot.gateway.memory import MemoryApi
from manager_bot.gateway.refusals import Refused, credential_of
from manager_bot.gateway.streams import Reported, UsageScanner, prompt_bound, reported_in_body
from manager_bot.gateway.transcription import Transcriber, answer_of, estimated_seconds

log = logging.getLogger(__name__)

CHAT_USER_HEADER = "X-Hatchbot-Chat-User"  # set by the runtime; never forwarded
# An image inline (the runtime's MAX_IMAGE_BYTES, at most 6 MiB: 8 MiB as base64) and
# the history beside it.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_AUDIO_BYTES = 25 * 1024 * 1024  # OpenAI's limit for one transcription
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # between two chunks of a stream, or for a whole answer
NO_RETRY = {"x-should-retry": "false"}  # the openai SDK would otherwise retry a 429


@dataclass(frozen=True)
class GatewayLimits:
    max_tokens: int = 1024
    agent_concurrency: int = 8
    audio_tokens_per_second: int = 100


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hatchbot_gateway_requests", "Completions asked for, by outcome", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "hatchbot_gateway_tokens", "Tokens counted, by kind", ["kind"], registry=self.registry
        )


def next_reset(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


class Gateway:
    """Authenticates agents, applies budgets and limits, forwards, counts."""

    def __init__(
        self,
        *,
        accounts: AccountBook,
        ledger: UsageLedger,
        limiter: UserRateLimiter,
        guard: EndpointGuard,
        limits: GatewayLimits,
        transcriber: Transcriber | None = None,
        memory: MemoryApi | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
        mcp: McpProxy | None = None,
    ) -> None:
        self._accounts = accounts
        self._mcp = mcp  # None: agents' MCP servers are not reachable here
        self._ledger = ledger
        self._limiter = limiter
        self._guard = guard
        self._limits = limits
        self._transcriber = transcriber  # None: voice cannot be transcribed here
        self._memory = memory  # None: agents keep their conversations in process only
        self._ready = ready  # an async callable: True when the database answers
        self._in_flight: dict[str, int] = {}
        self._providers: aiohttp.ClientSession | None = None
        self._user_endpoints: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.metrics = GatewayMetrics()
        self.url = ""  # http://host:port/v1 once started

    # -- lifecycle -------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        for method in ("POST", "GET", "DELETE"):  # the MCP streamable HTTP transport
            app.router.add_route(method, "/v1/mcp/{name}", self._mcp_request)
        if self._memory is not None:
            self._memory.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self, host: str, port: int) -> str:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        # Platform providers are the operator's choice; users' endpoints go through the guard.
        self._providers = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        self._user_endpoints = aiohttp.ClientSession(
            timeout=timeout, connector=self._guard.connector(limit=0), auto_decompress=False
        )
        self._ledger.start()
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}/v1"
        return self.url

    async def flush(self) -> None:
        """Write counted usage now (it is written every GATEWAY_FLUSH_SECONDS anyway)."""
        await self._ledger.flush()

    async def stop(self) -> None:
        """Stop serving (in-flight streams end), then write the counted usage."""
        if self._runner is not None:
            await self._runner.cleanup()
        for session in (self._providers, self._user_endpoints):
            if session is not None:
                await session.close()
        if self._mcp is not None:
            await self._mcp.close()
        await self._accounts.close()
        await self._ledger.close()

    # -- /v1 -------------------------------------------------------------------------

    async def _account(self, request: web.Request) -> AgentAccount:
        credential = credential_of(request)
        account = await self._accounts.find(credential) if credential else None
        if account is None:
            raise Refused(401, "invalid_gateway_credential", "Unknown gateway credential.")
        if account.refusal is not None:
            raise Refused(403, "agent_disabled", f"This agent is {account.refusal}.")
        return account

    async def _models(self, request: web.Request) -> web.StreamResponse:
        try:
            account = await self._account(request)
            upstream = self._upstream(account)
            return await self._forward_whole(upstream.models_url, upstream, None, "GET")
        except Refused as refused:
            return refused.response()

    async def _mcp_request(self, request: web.Request) -> web.StreamResponse:
        """One of the agent's MCP servers, by name (mcp_proxy.py)."""
        try:
            account = await self._account(request)
        except Refused as refused:
            return refused.response()
        if self._mcp is None:
            return Refused(404, "mcp_server_unknown", "No MCP servers here.").response()
        return await self._mcp.forward(request, account.agent_id)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            account = await self._account(request)
            upstream = self._upstream(account)
            body = await self._body(request)
            self._check_user_rate(account, request)
        except Refused as refused:
            self.metrics.requests.labels(refused.code).inc()
            return refused.response()
        if self._in_flight.get(account.agent_id, 0) >= self._limits.agent_concurrency:
            self.metrics.requests.labels("agent_busy").inc()
            return Refused(429, "agent_busy", "Too many requests of this agent at once.").response()
        max_tokens = self._cap_max_tokens(body)
        body["model"] = account.model  # the agent's configured model, whatever it asked for
        streaming = bool(body.get("stream"))
        if streaming:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                      "include_usage": True}  # fmt: skip
        bound = prompt_bound(body["messages"])
        admission = self._ledger.admit(account, prompt_bound=bound, max_tokens=max_tokens)
        refusal = self._admission_refusal(admission)
        if refusal is not None:
            self.metrics.requests.labels(refusal.code).inc()
            return refusal.response()
        self._in_flight[account.agent_id] = self._in_flight.get(account.agent_id, 0) + 1
        prompt_tokens = completion_tokens = 0
        try:
            payload = json.dumps(body).encode()
            for attempt in range(2):
                response, reported = await self._forward(
                    request, upstream, payload, streaming=streaming, bound=bound
                )
                if attempt or response.status not in (401, 403):
                    break
                # The key may have been replaced a moment ago (cached row): read it anew
                # and try once more, so a user's new key works from the next message on.
                fresh = await self._accounts.reread(credential_of(request))
                if fresh is None or fresh.refusal or fresh.upstream in (None, upstream):
                    break
                upstream = self._upstream(fresh)
            prompt_tokens, completion_tokens = reported.prompt_tokens, reported.completion_tokens
            self.metrics.requests.labels("ok" if response.status == 200 else "upstream").inc()
            return response
        except Refused as refused:
            self.metrics.requests.labels(refused.code).inc()
            return refused.response()
        finally:
            self._in_flight[account.agent_id] -= 1
            if not self._in_flight[account.agent_id]:
                del self._in_flight[account.agent_id]
            self._ledger.settle(
                account, reserved=bound + max_tokens, prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )  # fmt: skip
            self.metrics.tokens.labels("prompt").inc(prompt_tokens)
            self.metrics.tokens.labels("completion").inc(completion_tokens)

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        """A voice message to text; charged per second of audio, only when transcribed."""
        try:
            account = await self._account(request)
            if self._transcriber is None:
                raise Refused(
                    501, "transcription_unavailable",
                    "Voice messages cannot be transcribed on this platform.", headers=NO_RETRY,
                )  # fmt: skip
            self._check_user_rate(account, request)
            audio, file_name, content_type = await self._audio(request)
        except Refused as refused:
            self.metrics.requests.labels(refused.code).inc()
            return refused.response()
        rate = self._limits.audio_tokens_per_second
        reserved = estimated_seconds(len(audio)) * rate
        refusal = self._admission_refusal(
            self._ledger.admit(account, prompt_bound=reserved, max_tokens=0)
        )
        if refusal is not None:
            self.metrics.requests.labels(refusal.code).inc()
            return refusal.response()
        charged = 0
        try:
            response, seconds = await self._forward_audio(
                self._transcriber, audio, file_name=file_name, content_type=content_type
            )
            if response.status == 200:
                heard = seconds if seconds is not None else estimated_seconds(len(audio))
                charged = math.ceil(heard * rate)
            self.metrics.requests.labels("ok" if response.status == 200 else "upstream").inc()
            return response
        except Refused as refused:
            self.metrics.requests.labels(refused.code).inc()
            return refused.response()
        finally:
            self._ledger.settle(
                account, reserved=reserved, prompt_tokens=charged, completion_tokens=0
            )
            self.metrics.tokens.labels("audio").inc(charged)

    async def _forward(
        self, request: web.Request, upstream: Upstream, payload: bytes, *, streaming: bool,
        bound: int,
    ) -> tuple[web.StreamResponse, Reported]:  # fmt: skip
        """One try upstream: the response for the agent, and the usage it reported."""
        if streaming:
            scanner = UsageScanner()
            response = await self._forward_stream(request, upstream, payload, scanner)
            reported = scanner.reported
            if not reported.found and response.status == 200:
                # A stream cut short: charge an estimate rather than nothing.
                reported.prompt_tokens = bound // 4
                reported.completion_tokens = scanner.content_bytes // 16
            return response, reported
        answer, raw = await self._forward_buffered(upstream.chat_url, upstream, payload)
        return answer, reported_in_body(raw) if answer.status == 200 else Reported()

    # -- checks ----------------------------------------------------------------------

    def _upstream(self, account: AgentAccount) -> Upstream:
        if account.upstream is None:
            raise Refused(503, "no_provider_key", "No key is configured for this model.")
        if account.upstream.user_endpoint:
            try:
                self._guard.check(account.upstream.chat_url)
            except EndpointRefused as refused:
                raise Refused(502, "endpoint_refused", str(refused)) from None
        return account.upstream

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, web.HTTPRequestEntityTooLarge):
            raise Refused(400, "invalid_request", "The body must be JSON.") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise Refused(400, "invalid_request", "A chat completion needs `messages`.")
        return body

    @staticmethod
    async def _audio(request: web.Request) -> tuple[bytes, str, str]:
        """The `file` part of a transcription request: bytes, file name, content type.

        Read in chunks and bounded: a multipart body is not held to client_max_size."""
        if not request.content_type.startswith("multipart/"):
            raise Refused(400, "invalid_request", "A transcription is a multipart upload.")
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader) or part.name != "file":
                continue
            data = bytearray()
            while chunk := await part.read_chunk():
                data += chunk
                if len(data) > MAX_AUDIO_BYTES:
                    raise Refused(413, "audio_too_large", "The recording is too large.")
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            return bytes(data), part.filename or "voice.ogg", content_type
        raise Refused(400, "invalid_request", "A transcription needs a `file`.")

    @staticmethod
    def _admission_refusal(admission: Admission) -> Refused | None:
        if admission is Admission.EXHAUSTED:
            reset = next_reset().strftime("%H:%M UTC")
            return Refused(
                429, "daily_budget_exhausted",
                f"This bot has reached its daily limit; it resets at {reset}.", headers=NO_RETRY,
            )  # fmt: skip
        if admission is Admission.RESERVED:  # the SDK retries this one, with backoff
            return Refused(
                429, "budget_reserved", "The rest of today's budget is in use; retry shortly.",
                headers={"retry-after": "1"},
            )  # fmt: skip
        return None

    def _check_user_rate(self, account: AgentAccount, request: web.Request) -> None:
        user = request.headers.get(CHAT_USER_HEADER, "").strip()[:64]
        if not user:
            return
        wait = self._limiter.allow(account.agent_id, user)
        if wait:
            raise Refused(
                429, "user_rate_limited", "Too many messages from this user; slow down.",
                headers={**NO_RETRY, "retry-after": str(max(1, round(wait)))},
            )  # fmt: skip

    def _cap_max_tokens(self, body: dict[str, Any]) -> int:
        cap = self._limits.max_tokens
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = body.get(field)
        granted = asked if isinstance(asked, int) and 0 < asked <= cap else cap
        body[field] = granted
        return granted

    # -- forwarding ------------------------------------------------------------------

    def _session(self, upstream: Upstream) -> aiohttp.ClientSession:
        session = self._user_endpoints if upstream.user_endpoint else self._providers
        assert session is not None, "the gateway is not started"
        return session

    def _request(
        self, upstream: Upstream, url: str, payload: bytes | None, method: str = "POST"
    ) -> Any:
        headers = {**upstream.headers, "Accept-Encoding": "identity"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        return self._session(upstream).request(
            method, url, data=payload, headers=headers, allow_redirects=False
        )

    async def _forward_whole(
        self, url: str, upstream: Upstream, payload: bytes | None, method: str
    ) -> web.Response:
        response, _ = await self._forward_buffered(url, upstream, payload, method)
        return response

    async def _forward_buffered(
        self, url: str, upstream: Upstream, payload: bytes | None, method: str = "POST"
    ) -> tuple[web.Response, bytes]:
        try:
            async with self._request(upstream, url, payload, method) as answer:
                self._check_status(answer)
                if answer.status >= 400:
                    return self._upstream_error(answer), b""
                raw = await answer.content.read(MAX_RESPONSE_BYTES + 1)
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise Refused(502, "response_too_large", "The model's answer is too large.")
                content_type = answer.headers.get("Content-Type", "application/json")
                return web.Response(body=raw, status=answer.status,
                                    headers={"Content-Type": content_type}), raw  # fmt: skip
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise self._unreachable(error) from None

    async def _forward_audio(
        self, transcriber: Transcriber, audio: bytes, *, file_name: str, content_type: str
    ) -> tuple[web.Response, float | None]:
        """The transcript as `{"text": …}` (nothing else of the provider's answer), and the
        seconds of audio the provider reported. A provider without the endpoint (404, 405,
        501) is the platform lacking transcription, not an error of the agent's."""
        form = aiohttp.FormData()
        form.add_field("model", transcriber.model)
        form.add_field("response_format", "json")
        form.add_field("file", audio, filename=file_name, content_type=content_type)
        session = self._providers
        assert session is not None, "the gateway is not started"
        headers = {**transcriber.headers, "Accept-Encoding": "identity"}
        try:
            async with session.post(
                transcriber.url, data=form, headers=headers, allow_redirects=False
            ) as answer:
                self._check_status(answer)
                if answer.status in (404, 405, 501):
                    log.warning("the transcription endpoint answered %d", answer.status)
                    raise Refused(
                        501, "transcription_unavailable",
                        "Voice messages cannot be transcribed on this platform.",
                        headers=NO_RETRY,
                    )  # fmt: skip
                if answer.status >= 400:
                    return self._upstream_error(answer), None
                raw = await answer.content.read(MAX_RESPONSE_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise self._unreachable(error) from None
        parsed = answer_of(raw) if len(raw) <= MAX_RESPONSE_BYTES else None
        if parsed is None:
            raise Refused(502, "upstream_unreadable", "The transcription could not be read.")
        text, seconds = parsed
        return web.json_response({"text": text}), seconds

    async def _forward_stream(
        self, request: web.Request, upstream: Upstream, payload: bytes, scanner: UsageScanner
    ) -> web.StreamResponse:
        """Each chunk is written on as it arrives: nothing is buffered but a line's tail."""
        try:
            async with self._request(upstream, upstream.chat_url, payload) as answer:
                self._check_status(answer)
                if answer.status >= 400:
                    return self._upstream_error(answer)
                response = web.StreamResponse(
                    status=answer.status,
                    headers={
                        "Content-Type": answer.headers.get("Content-Type", "text/event-stream"),
                        "Cache-Control": "no-cache",
                    },
                )
                await response.prepare(request)
                size = 0
                async for chunk in answer.content.iter_any():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        log.warning("a streamed answer passed %d bytes; cut", MAX_RESPONSE_BYTES)
                        break
                    scanner.feed(chunk)
                    try:
                        await response.write(chunk)
                    except ConnectionError:  # the agent went away: stop reading the provider
                        return response
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise self._unreachable(error) from None

    def _check_status(self, answer: aiohttp.ClientResponse) -> None:
        if 300 <= answer.status < 400:
            # Never followed: a redirect could point at an address the guard refuses.
            raise Refused(502, "endpoint_refused", "The endpoint answered with a redirect.")

    @staticmethod
    def _upstream_error(answer: aiohttp.ClientResponse) -> web.Response:
        """The provider's status with our words (its body can quote part of the key)."""
        headers = {}
        if answer.status == 429 and "retry-after" in answer.headers:
            headers["retry-after"] = answer.headers["retry-after"]
        body = {
            "error": {
                "message": f"The model provider answered {answer.status}.",
                "type": "upstream_error",
                "code": f"provider_{answer.status}",
            }
        }
        return web.json_response(body, status=answer.status, headers=headers)

    @staticmethod
    def _unreachable(error: BaseException) -> Refused:
        refused = refusal_of(error)
        if refused is not None:
            return Refused(502, "endpoint_refused", str(refused))
        log.warning("model provider unreachable: %s", type(error).__name__)
        return Refused(502, "provider_unreachable", "The model provider cannot be reached.")

    # -- health ----------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready is None:
            return web.Response(text="ready")
        try:
            async with asyncio.timeout(2):
                await self._ready()
        except Exception:
            return web.Response(status=503, text="database unreachable")
        return web.Response(text="ready")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")
