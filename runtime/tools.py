"""Tools over MCP: the agent's MCP servers and the tool-call loop of one answer.

The manager's gateway proxies each server the owner added (`MCP_SERVERS`) at
`{MCP_BASE_URL}/{name}`, adding the server's own token and guarding against
private addresses: the runtime holds neither the server's URL nor its token,
only its gateway credential (`LLM_API_KEY`), sent as a bearer token.

Each server gets one MCP session (streamable HTTP, the official `mcp` client),
held by a task of its own; its tools are listed when it connects. A server that
does not answer is logged and skipped, and tried again with growing pauses.
The model sees every listed tool in OpenAI's function format (names prefixed
with the server's when two servers clash). One answer runs at most
MCP_MAX_STEPS rounds of tool calls; each call has MCP_CALL_TIMEOUT seconds and
its result is cut to MCP_MAX_RESULT_BYTES. Failures and time-outs go back to
the model as the tool's result, so the user still gets an answer. While tools
run the chat shows "🔧 name…", removed once the answer starts.

`mcp` (and httpx2, anyio, starlette under it: about 30 MB and 0.35 s) is
imported only when a server is configured: this module itself does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.config import RuntimeSettings
from runtime.llm import Llm, ToolCall, Usage
from runtime.tasks import cancel_and_wait
from runtime.telegram import BotApi, TelegramApiError

if TYPE_CHECKING:
    import httpx2
    from mcp import Client

log = logging.getLogger(__name__)
JsonDict = dict[str, Any]

STATUS = "🔧 {names}…"
CUT_MARKER = "\n[… cut: {kept} of {total} bytes shown]"
# Pauses before trying a server again, then the last one over and over.
RECONNECT_DELAYS = (1.0, 2.0, 5.0, 15.0, 30.0, 60.0)
# How long an answer waits for servers still being tried for the first time.
SETTLE_SECONDS = 5.0
CONNECT_SECONDS = 10.0
MAX_TOOLS = 128  # OpenAI's limit on `tools`
MAX_DESCRIPTION = 1024
OPENAI_NAME = re.compile(r"[^a-zA-Z0-9_-]")
INVALID_REQUEST = -32600  # how a server says "no such session" (it restarted, or ended it)


class ToolMetrics:
    """Tool calls by outcome, and servers whose tools are listed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "hatchbot_agent_tool_calls",
            "Tool calls by outcome (ok, error, timeout)",
            ["outcome"],
            registry=registry,
        )
        self.servers_up = Gauge(
            "hatchbot_agent_mcp_servers_up",
            "MCP servers connected, their tools listed",
            registry=registry,
        )
        self.servers_configured = Gauge(
            "hatchbot_agent_mcp_servers", "MCP servers configured", registry=registry
        )
        for outcome in ("ok", "error", "timeout"):
            self.calls.labels(outcome=outcome)


@dataclass(frozen=True)
class Tool:
    """One tool of one server; `exposed` is the name the model calls it by."""

    server: str
    name: str
    exposed: str
    description: str
    schema: JsonDict

    def as_openai(self) -> JsonDict:
        return {
            "type": "function",
            "function": {
                "name": self.exposed,
                "description": self.description,
                "parameters": self.schema,
            },
        }


class ToolFailed(Exception):
    """A call that produced no result; the text is what the model is told."""


class SessionLost(ToolFailed):
    """The server no longer knows the session (it or the gateway restarted), or
    could not be reached: worth one more try on a new session."""


class ServerLink:
    """One MCP server behind the gateway: a session held by its own task.

    The session's transport runs in anyio task groups, which must be entered and
    left by the same task: `_hold` owns it; answers only call through it."""

    def __init__(self, *, name: str, url: str, credential: str, call_timeout: float) -> None:
        self.name = name
        self.url = url
        self.tools: list[JsonDict] = []  # name, description, inputSchema, as listed
        self.tried = asyncio.Event()  # the first attempt to connect has ended
        self._credential = credential
        self._call_timeout = call_timeout
        self._client: Client | None = None
        self._broken = asyncio.Event()
        # Cleared when a session is lost; set when the next attempt has connected or failed.
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[], None]] = []

    @property
    def up(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._hold(), name=f"mcp-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def call(self, name: str, arguments: JsonDict) -> Any:
        """The server's `CallToolResult`; ToolFailed when there is none."""
        from mcp.shared.exceptions import MCPError

        client = self._client
        if client is None:
            raise ToolFailed("the tool's server is unavailable right now")
        try:
            async with asyncio.timeout(self._call_timeout):
                return await client.call_tool(name, arguments)
        except TimeoutError:
            raise
        except MCPError as error:
            reason = f"the server refused the call ({error.message[:200]})"
            if error.code == INVALID_REQUEST:  # the session is gone: open a new one
                self._lose(client)
                raise SessionLost(reason) from None
            raise ToolFailed(reason) from None
        except Exception as error:
            self._lose(client)
            raise SessionLost(f"the server could not be reached ({_describe(error)})") from None

    async def wait_up(self, timeout: float) -> bool:
        """After a lost session: whether the new one opens (its first attempt decides)."""
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return self.up

    def _lose(self, client: Client) -> None:
        """Stop using a session that failed; `_hold` opens a new one at once."""
        if self._client is client:
            self._client = None
            self._settled.clear()
            self._broken.set()
            self._changed()

    async def _hold(self) -> None:
        # A third of a second of imports: off the event loop, which is answering already.
        await asyncio.to_thread(_load_mcp)
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        failures = 0
        while True:
            lost = False
            try:
                # The handshake and the listing have a deadline; the session then has none.
                async with (
                    asyncio.timeout(CONNECT_SECONDS + self._call_timeout) as connecting,
                    _http_client(self._credential, self._call_timeout) as http,
                    Client(
                        streamable_http_client(self.url, http_client=http),
                        mode="legacy",  # the initialize handshake every server knows
                        cache=None,
                    ) as client,
                ):
                    self.tools = await _list_tools(client)
                    connecting.reschedule(None)
                    self._broken.clear()
                    self._client = client
                    self._settled.set()
                    failures = 0
                    log.info("MCP server %s: %d tools", self.name, len(self.tools))
                    self._changed()
                    self.tried.set()
                    await self._broken.wait()
                    lost = True
                    log.info("MCP server %s: session lost; reconnecting", self.name)
            except Exception as error:
                if not lost:  # an attempt failed (not the end of a lost session)
                    self._settled.set()
                log.warning(
                    "MCP server %s did not answer (%s); trying again in %.0f s",
                    self.name,
                    _describe(error),
                    0 if lost else RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)],
                )
            finally:
                if self._client is not None:
                    self._client = None
                    self._changed()
                self.tried.set()
            if lost:
                continue  # it answered a moment ago: reconnect at once
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])
            failures += 1

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()


class StatusNote:
    """The "🔧 search_docs…" message while tools run: a nicety, so a failure to
    send, edit or delete it is logged and never breaks the answer."""

    def __init__(self, api: BotApi, chat_id: int) -> None:
        self._api = api
        self._chat_id = chat_id
        self._message_id: int | None = None
        self._text = ""

    async def show(self, text: str) -> None:
        if text == self._text:
            return
        try:
            if self._message_id is None:
                sent = await self._api.call("sendMessage", chat_id=self._chat_id, text=text)
                self._message_id = int(sent["message_id"])
            else:
                await self._api.call(
                    "editMessageText",
                    chat_id=self._chat_id,
                    message_id=self._message_id,
                    text=text,
                )
            self._text = text
        except (TelegramApiError, KeyError, TypeError, ValueError) as error:
            log.info("tool status not shown in chat %s: %s", self._chat_id, _describe(error))

    async def clear(self) -> None:
        if self._message_id is None:
            return
        message_id, self._message_id, self._text = self._message_id, None, ""
        try:
            await self._api.call("deleteMessage", chat_id=self._chat_id, message_id=message_id)
        except TelegramApiError as error:
            log.info("tool status not removed in chat %s: %s", self._chat_id, error.code)


class Toolbox:
    """The agent's MCP servers, and the tool-call loop that answers with them."""

    def __init__(
        self,
        *,
        servers: list[str],
        base_url: str,
        credential: str,
        llm: Llm,
        api: BotApi,
        registry: CollectorRegistry,
        max_steps: int = 5,
        call_timeout: float = 20.0,
        max_result_bytes: int = 16 * 1024,
    ) -> None:
        self._llm = llm
        self._api = api
        self._max_steps = max_steps
        self._call_timeout = call_timeout
        self._max_result_bytes = max_result_bytes
        self.metrics = ToolMetrics(registry)
        self.metrics.servers_configured.set(len(servers))
        self.links = [
            ServerLink(
                name=name,
                url=f"{base_url}/{name}",
                credential=credential,
                call_timeout=call_timeout,
            )
            for name in servers
        ]
        for link in self.links:
            link.on_change.append(self._servers_changed)
        self._catalogue: list[Tool] | None = None
        self._offered: list[JsonDict] = []

    def start(self) -> None:
        for link in self.links:
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links))

    def _servers_changed(self) -> None:
        self.metrics.servers_up.set(sum(link.up for link in self.links))
        self._catalogue = None

    def catalogue(self) -> list[Tool]:
        """The tools of the servers that are up, named for the model (kept until a
        server connects or drops: every answer needs them)."""
        if self._catalogue is None:
            self._catalogue = self._name_tools()
            self._offered = [tool.as_openai() for tool in self._catalogue]
        return self._catalogue

    def _name_tools(self) -> list[Tool]:
        listed = [
            (link.name, tool, _openai_name(str(tool.get("name", ""))))
            for link in self.links
            if link.up
            for tool in link.tools
        ]
        clashing = Tally(name for _, _, name in listed)
        tools: list[Tool] = []
        taken: set[str] = set()
        for server, tool, name in listed:
            exposed = name if clashing[name] == 1 else _openai_name(f"{server}__{name}")
            while exposed in taken:  # a clash even after prefixing (names cut at 64)
                exposed = _openai_name(f"{exposed[:60]}_{len(taken)}")
            taken.add(exposed)
            schema = tool.get("inputSchema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                schema = {"type": "object", "properties": {}}
            description = str(tool.get("description") or "")[:MAX_DESCRIPTION]
            tools.append(Tool(server, str(tool.get("name", "")), exposed, description, schema))
        if len(tools) > MAX_TOOLS:
            log.warning("%d tools listed; the model is offered the first %d", len(tools), MAX_TOOLS)
        return tools[:MAX_TOOLS]

    async def stream(
        self,
        chat_id: int,
        prompt: list[JsonDict],
        usage: Usage,
        *,
        chat_user: int | None = None,
    ) -> AsyncIterator[str]:
        """Like `Llm.stream`, with tools: text pieces of the answer as they come.

        Text the model writes before calling tools is part of the answer; the
        next step's text follows after a blank line. After the last allowed
        step the model is asked for an answer with tool_choice "none"."""
        await self._settle()
        tools = self.catalogue()
        if not tools:
            async for piece in self._llm.stream(prompt, usage, chat_user=chat_user):
                yield piece
            return
        by_name = {tool.exposed: tool for tool in tools}
        offered = self._offered
        messages = list(prompt)
        note = StatusNote(self._api, chat_id)
        started, wrote = time.monotonic(), False
        try:
            for step in range(self._max_steps + 1):
                calls: list[ToolCall] = []
                step_text: list[str] = []
                step_usage = Usage()
                async for piece in self._llm.stream(
                    messages,
                    step_usage,
                    chat_user=chat_user,
                    tools=offered,
                    tool_choice=None if step < self._max_steps else "none",
                    tool_calls=calls,
                ):
                    if not step_text:
                        await note.clear()
                        if wrote:
                            yield "\n\n"
                    step_text.append(piece)
                    yield piece
                usage.prompt_tokens += step_usage.prompt_tokens
                usage.completion_tokens += step_usage.completion_tokens
                wrote = wrote or bool(step_text)
                if not calls:
                    return
                messages.append(
                    {
                        "role": "assistant",
                        "content": "".join(step_text) or None,
                        "tool_calls": [call.as_message_part() for call in calls],
                    }
                )
                shown = dict.fromkeys(
                    by_name[c.name].name if c.name in by_name else c.name for c in calls
                )
                await note.show(STATUS.format(names=", ".join(shown)))
                results = await asyncio.gather(*(self._run(call, by_name) for call in calls))
                for call, result in zip(calls, results, strict=True):
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        finally:
            # The whole loop is time spent waiting on others (models and tools).
            usage.seconds = time.monotonic() - started
            with contextlib.suppress(Exception):
                await note.clear()

    async def _settle(self) -> None:
        """Give servers still being tried for the first time a moment (start-up)."""
        waiting = [link.tried.wait() for link in self.links if not link.tried.is_set()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SETTLE_SECONDS):
                    await asyncio.gather(*waiting)

    async def _run(self, call: ToolCall, by_name: dict[str, Tool]) -> str:
        """The text the model gets back for one call: the result, or what went wrong."""
        tool = by_name.get(call.name)
        if tool is None:
            self.metrics.calls.labels(outcome="error").inc()
            return f"Error: there is no tool named {call.name!r}."
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            self.metrics.calls.labels(outcome="error").inc()
            return "Error: the arguments must be a JSON object."
        link = next(link for link in self.links if link.name == tool.server)
        try:
            try:
                result = await link.call(tool.name, arguments)
            except SessionLost:
                if not await link.wait_up(self._call_timeout):
                    raise
                result = await link.call(tool.name, arguments)  # once, on the new session
        except TimeoutError:
            self.metrics.calls.labels(outcome="timeout").inc()
            log.info("tool %s of %s timed out", tool.name, tool.server)
            return f"Error: the tool did not answer within {self._call_timeout:g} seconds."
        except ToolFailed as failure:
            self.metrics.calls.labels(outcome="error").inc()
            log.info("tool %s of %s failed: %s", tool.name, tool.server, failure)
            return f"Error: {failure}."
        failed = bool(getattr(result, "is_error", False))
        self.metrics.calls.labels(outcome="error" if failed else "ok").inc()
        text = _result_text(result)
        return cap(f"Error: {text}" if failed else text, self._max_result_bytes)


def toolbox_for(
    settings: RuntimeSettings, *, llm: Llm, api: BotApi, registry: CollectorRegistry
) -> Toolbox | None:
    """The agent's toolbox, or None when it has no MCP servers (and `mcp` stays unloaded)."""
    if not settings.mcp_servers or settings.mcp_base_url is None:
        return None
    credential = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
    return Toolbox(
        servers=settings.mcp_servers,
        base_url=settings.mcp_base_url,
        credential=credential,
        llm=llm,
        api=api,
        registry=registry,
        max_steps=settings.mcp_max_steps,
        call_timeout=settings.mcp_call_timeout,
        max_result_bytes=settings.mcp_max_result_bytes,
    )


def cap(text: str, limit: int) -> str:
    """`text` in at most `limit` UTF-8 bytes, the marker included when it is cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    # `kept` is below `limit`, so its digits take no more room than the limit's.
    room = len(CUT_MARKER.format(kept=limit, total=len(raw)).encode())
    kept = max(limit - room, 0)
    return raw[:kept].decode(errors="ignore") + CUT_MARKER.format(kept=kept, total=len(raw))


async def _list_tools(client: Client) -> list[JsonDict]:
    tools: list[JsonDict] = []
    cursor: str | None = None
    for _ in range(20):  # pages; a server that never ends its listing is cut short
        page = await client.list_tools(cursor=cursor)
        tools.extend(tool.model_dump(by_alias=True, mode="json") for tool in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _load_mcp() -> None:
    import mcp.client.streamable_http  # noqa: F401

    # Its INFO lines (session ids, stream reconnects) would be noise in the agent's log.
    logging.getLogger("mcp").setLevel(logging.WARNING)


def _http_client(credential: str, call_timeout: float) -> httpx2.AsyncClient:
    """The HTTP client of one server's session: the gateway credential on every request.

    The agent acts on no server-initiated message, so the transport's standing GET
    stream is declined here, without a request: through the gateway it would hold
    one of the agent's few concurrent requests per server, for nothing."""
    import httpx2

    class NoStandingStream(httpx2.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.method == "GET":
                return httpx2.Response(405, request=request)  # the spec's "not offered"
            return await super().handle_async_request(request)

    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {credential}"},
        transport=NoStandingStream(),
        # Reads wait for a tool's answer; calls have their own time-out.
        timeout=httpx2.Timeout(CONNECT_SECONDS, read=max(60.0, call_timeout + 10)),
    )


def _result_text(result: Any) -> str:
    """A `CallToolResult` as text: its text blocks; other kinds named, not inlined."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(block.text))
        elif kind == "resource" and hasattr(block.resource, "text"):
            parts.append(str(block.resource.text))
        else:
            parts.append(f"[{kind or 'unknown'} content omitted]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts) or "(no output)"


def _openai_name(name: str) -> str:
    """OpenAI function names are ^[a-zA-Z0-9_-]{1,64}$."""
    return (OPENAI_NAME.sub("_", name) or "tool")[:64]


def _describe(error: BaseException) -> str:
    """The innermost errors' kinds and first words (task groups nest them)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions[:3])
    detail = str(error)[:160]
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
