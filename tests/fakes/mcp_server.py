"""A fake MCP server on 127.0.0.1 speaking the streamable HTTP transport.

JSON-RPC over POST (`initialize`, `notifications/initialized`, `tools/list`,
`tools/call`, `ping`; `server/discover` is answered "method not found", so the
official client falls back to the `initialize` handshake as with any pre-2026
server). Requests are answered with `application/json`, or with one SSE event
when `sse=True`. Sessions: `initialize` hands out an `Mcp-Session-Id`; later
requests must carry it (400 without, 404 for an unknown one); DELETE ends it;
GET (server-initiated stream) is 405, which the spec allows.

One fake serves its default endpoint at `path` and named endpoints at
`{path}/{name}` (`server.named("docs")`), each with its own tools and log:

    async with FakeMcpServer(path="/mcp") as server:
        server.url                 # http://127.0.0.1:PORT/mcp
        server.named("docs").url   # http://127.0.0.1:PORT/mcp/docs
        server.requests            # [(method, headers), ...]
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from aiohttp import web

from tests.fakes.loopback import serve_on_loopback

JsonDict = dict[str, Any]
# A tool's handler gets the call's arguments; a str is the result's text, a dict
# is the whole `CallToolResult` (e.g. with `isError`).
ToolHandler = Callable[[JsonDict], Awaitable[str | JsonDict]]

PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
SEARCH_DOCS_TEXT = "Hatchbot agents are deployed from the manager bot's card."
FAIL_TEXT = "search index unavailable"
HUGE_SIZE = 1_000_000  # under the official client's 1 MiB SSE event cap

_PARSE_ERROR, _INVALID_REQUEST, _METHOD_NOT_FOUND, _INVALID_PARAMS = -32700, -32600, -32601, -32602


class SeenRequest(NamedTuple):
    """One HTTP request: the JSON-RPC method (or "GET"/"DELETE") and its headers."""

    method: str
    headers: dict[str, str]


@dataclass
class ToolCall:
    name: str
    arguments: JsonDict


@dataclass
class FakeTool:
    name: str
    description: str
    schema: JsonDict
    handler: ToolHandler

    def listing(self) -> JsonDict:
        return {"name": self.name, "description": self.description, "inputSchema": self.schema}


async def _search_docs(arguments: JsonDict) -> str:
    return f"{SEARCH_DOCS_TEXT} (query: {arguments.get('query', '')})"


async def _fail(arguments: JsonDict) -> JsonDict:
    return {"content": [{"type": "text", "text": FAIL_TEXT}], "isError": True}


async def _slow(arguments: JsonDict) -> str:
    seconds = float(arguments.get("seconds", 1))
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


async def _huge(arguments: JsonDict) -> str:
    return "x" * HUGE_SIZE


def default_tools() -> dict[str, FakeTool]:
    def schema(properties: JsonDict, required: list[str]) -> JsonDict:
        return {"type": "object", "properties": properties, "required": required}

    tools = [
        FakeTool(
            "search_docs",
            "Search the documentation.",
            schema({"query": {"type": "string"}}, ["query"]),
            _search_docs,
        ),
        FakeTool("fail", "Always fails.", schema({}, []), _fail),
        FakeTool(
            "slow",
            "Sleeps for the given seconds.",
            schema({"seconds": {"type": "number"}}, ["seconds"]),
            _slow,
        ),
        FakeTool("huge", "Returns about 1 MB of text.", schema({}, []), _huge),
    ]
    return {tool.name: tool for tool in tools}


@dataclass
class McpEndpoint:
    """One MCP server: its tools, sessions and what it has seen."""

    url: str = ""
    sse: bool = False
    tools: dict[str, FakeTool] = field(default_factory=default_tools)
    requests: list[SeenRequest] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    ended_sessions: set[str] = field(default_factory=set)
    # False: every request gets 503, like a server that is down.
    available: bool = True
    cancelled: list[Any] = field(default_factory=list)  # request ids the client gave up on
    _running: dict[Any, asyncio.Task[str | JsonDict]] = field(default_factory=dict)

    def add_tool(self, name: str, description: str, schema: JsonDict, handler: ToolHandler) -> None:
        self.tools[name] = FakeTool(name, description, schema, handler)

    def remove_tool(self, name: str) -> None:
        self.tools.pop(name, None)

    def cancel_running(self) -> None:
        """Stop tool handlers still working (a slow tool must not hold up shutdown)."""
        for running in list(self._running.values()):
            running.cancel()

    def methods(self) -> list[str]:
        return [seen.method for seen in self.requests]

    # -- HTTP --------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = dict(request.headers)
        if request.method != "POST":
            self.requests.append(SeenRequest(request.method, headers))
            if not self.available:
                return web.Response(status=503)
            if request.method == "DELETE":
                session = request.headers.get("Mcp-Session-Id", "")
                if session not in self.sessions:
                    return web.Response(status=404)
                self.sessions.discard(session)
                self.ended_sessions.add(session)
                return web.Response(status=200)
            return web.Response(status=405, headers={"Allow": "POST, DELETE"})
        try:
            message = json.loads(await request.read())
        except ValueError:
            self.requests.append(SeenRequest("?", headers))
            return _rpc_error(None, _PARSE_ERROR, "Parse error", status=400)
        if not isinstance(message, dict):  # batches are gone since 2025-06-18
            self.requests.append(SeenRequest("?", headers))
            return _rpc_error(None, _INVALID_REQUEST, "Invalid Request", status=400)
        method = str(message.get("method", ""))
        self.requests.append(SeenRequest(method or "response", headers))
        if not self.available:
            return web.Response(status=503, text="unavailable")
        ident = message.get("id")
        new_session: str | None = None
        if method == "initialize":
            new_session = uuid.uuid4().hex
            self.sessions.add(new_session)
        else:
            session = request.headers.get("Mcp-Session-Id")
            if session is None and method != "server/discover":
                return _rpc_error(ident, _INVALID_REQUEST, "Missing Mcp-Session-Id", status=400)
            if session is not None and session not in self.sessions:
                return _rpc_error(ident, _INVALID_REQUEST, "Session not found", status=404)
        if "id" not in message:  # a notification (or a response to us): accepted, no body
            if method == "notifications/cancelled":
                request_id = (message.get("params") or {}).get("requestId")
                self.cancelled.append(request_id)
                running = self._running.get(request_id)
                if running is not None:
                    running.cancel()
            return web.Response(status=202)
        reply = await self._dispatch(ident, method, message.get("params") or {})
        extra = {"Mcp-Session-Id": new_session} if new_session else {}
        if self.sse:
            return await _sse_reply(request, reply, extra)
        return web.json_response(reply, headers=extra)

    async def _dispatch(self, ident: Any, method: str, params: JsonDict) -> JsonDict:
        if method == "initialize":
            asked = params.get("protocolVersion")
            version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
            return _result(
                ident,
                {
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": False}},
                    "serverInfo": {"name": "fake-mcp", "version": "1.0.0"},
                },
            )
        if method == "ping":
            return _result(ident, {})
        if method == "tools/list":
            return _result(ident, {"tools": [tool.listing() for tool in self.tools.values()]})
        if method == "tools/call":
            name = str(params.get("name", ""))
            arguments = params.get("arguments") or {}
            tool = self.tools.get(name)
            if tool is None:
                return _error(ident, _INVALID_PARAMS, f"Unknown tool: {name}")
            self.calls.append(ToolCall(name, arguments))
            running = asyncio.ensure_future(tool.handler(arguments))
            self._running[ident] = running
            try:
                output = await running
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise
                return _error(ident, _INVALID_REQUEST, "Request cancelled")
            finally:
                self._running.pop(ident, None)
            if isinstance(output, str):
                output = {"content": [{"type": "text", "text": output}], "isError": False}
            return _result(ident, output)
        return _error(ident, _METHOD_NOT_FOUND, f"Method not found: {method}")


class FakeMcpServer(McpEndpoint):
    """The default endpoint at `path`, plus named ones at `{path}/{name}`."""

    def __init__(self, path: str = "/mcp", *, sse: bool = False) -> None:
        super().__init__(sse=sse)
        self.path = "/" + path.strip("/")
        self.root_url = ""
        self._named: dict[str, McpEndpoint] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """What `MCP_BASE_URL` is set to so that `{base_url}/{name}` reaches `named(name)`."""
        return self.url

    def named(self, name: str) -> McpEndpoint:
        """The endpoint at `{path}/{name}` (created with the default tools on first use)."""
        if name not in self._named:
            self._named[name] = McpEndpoint(url=f"{self.url}/{name}", sse=self.sse)
        return self._named[name]

    async def _route_named(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._named.get(request.match_info["name"])
        if endpoint is None:
            return web.Response(status=404)
        return await endpoint.handle(request)

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", self.path, self.handle)
        app.router.add_route("*", self.path + "/{name}", self._route_named)
        self._runner, self.root_url = await serve_on_loopback(app)
        self.url = f"{self.root_url}{self.path}"

    async def stop(self) -> None:
        for endpoint in (self, *self._named.values()):
            endpoint.cancel_running()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeMcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _result(ident: Any, result: JsonDict) -> JsonDict:
    return {"jsonrpc": "2.0", "id": ident, "result": result}


def _error(ident: Any, code: int, message: str) -> JsonDict:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}}


def _rpc_error(ident: Any, code: int, message: str, *, status: int) -> web.Response:
    return web.json_response(_error(ident, code, message), status=status)


async def _sse_reply(
    request: web.Request, reply: JsonDict, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
    await response.prepare(request)
    event = f"event: message\nid: {uuid.uuid4().hex}\ndata: {json.dumps(reply)}\n\n"
    await response.write(event.encode())
    await response.write_eof()
    return response


@pytest.fixture
async def mcp_server() -> AsyncIterator[FakeMcpServer]:
    """A started fake MCP server; stopped after the test."""
    async with FakeMcpServer() as server:
        yield server
