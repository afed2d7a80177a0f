"""A small keep-alive HTTP/1.1 client for the Bot API's JSON calls.

Why not aiohttp's `ClientSession` for these: every call through it builds a request
and a response object, a timer context, a cookie filter, a parsed URL and a header
multidict. Measured in one process against an aiohttp server on 127.0.0.1 (3000
sequential POSTs of a sendMessage-sized JSON, uvloop): 165-215 µs of CPU per call
through `ClientSession`, 62-87 µs through a bare stream; the manager makes ~22 Bot
API calls per user's /deploy. File uploads still go through aiogram's own session.

Also the Kubernetes API's calls where no proxy stands between (backends/kubernetes.py).

What it does: any method, to one or more origins, with headers; answers with a
Content-Length, chunked, or read to the end; connections kept for the next call
(at most `limit` in use at once, idle ones closed after IDLE_SECONDS); TLS with
certifi's roots, as aiogram's session. What it does not: proxies, redirects,
compression, cookies. The Bot API needs none of them, and the manager never gave
aiogram's session any of them.

Errors never carry the URL (a Bot API URL holds the bot's token): only the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import aiohappyeyeballs
import certifi

IDLE_SECONDS: Final = 15.0  # as aiohttp's keepalive_timeout: a server may drop them sooner
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 64 * 1024 * 1024  # getUpdates' 100 updates are far below this


class TransportError(Exception):
    """The exchange failed: nothing was answered (or no whole answer)."""


class ConnectError(TransportError):
    """No connection could be made; the request was never sent."""


class TlsRefused(ConnectError):
    """The TLS handshake failed (an unknown CA, a wrong name): trying again changes nothing."""


class ProtocolError(TransportError):
    """The answer was not HTTP/1.x as understood here."""


@dataclass(frozen=True)
class Origin:
    tls: bool
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(eq=False)
class _Connection:
    origin: Origin
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)
    reused: bool = False

    def usable(self, now: float, idle_seconds: float) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < idle_seconds
        )

    def close(self) -> None:
        self.writer.close()


class KeepAliveClient:
    def __init__(
        self,
        *,
        limit: int = 100,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        user_agent: str = "hatchbot",
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        """`limit`: connections in use at once, over all origins (aiogram's default).
        `server_hostname`: the name TLS expects, where it is not the URL's host (a
        kubeconfig's tls-server-name)."""
        self._tls = ssl_context
        self._server_hostname = server_hostname
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._user_agent = user_agent
        self._idle_seconds = idle_seconds
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float,
        connect_timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """The answer's status and body; TimeoutError after `timeout` seconds in all
        (waiting for a free connection included) or `connect_timeout` for a new
        connection; TransportError for anything else."""
        if self._closed:
            raise TransportError("the client is closed")
        origin, path = self._split(url)
        head = [f"{method} {path} HTTP/1.1", f"Host: {origin.authority}"]
        extra = headers or {}
        if not any(name.lower() == "user-agent" for name in extra):
            head.append(f"User-Agent: {self._user_agent}")
        if content_type is not None:
            head.append(f"Content-Type: {content_type}")
        for name, value in extra.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise TransportError(f"a line break in the header {name.strip()[:40]!r}")
            head.append(f"{name}: {value}")
        if body or method not in ("GET", "HEAD"):
            head.append(f"Content-Length: {len(body)}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout), self._slots:
            connection = await self._connection(origin, connect_timeout)
            try:
                status, answer, keep = await self._exchange(connection, message, method)
            except _Stale:
                # A kept connection the server closed while it was idle (a race no check
                # before sending rules out): the request did not reach it; a new one.
                connection = await self._connection(origin, connect_timeout, fresh=True)
                status, answer, keep = await self._exchange(connection, message, method)
        if keep and not self._closed:
            self._keep(connection)
        else:
            connection.close()
        return status, answer

    def _keep(self, connection: _Connection) -> None:
        """Back to its pool, newest last; the oldest, idle too long, closed: after a
        burst, calls one at a time reuse the newest and the rest would stay open."""
        now = connection.idle_since = time.monotonic()
        connection.reused = True
        pool = self._idle.setdefault(connection.origin, [])
        while pool and now - pool[0].idle_since >= self._idle_seconds:
            pool.pop(0).close()
        pool.append(connection)

    async def close(self) -> None:
        self._closed = True
        idle = [connection for pool in self._idle.values() for connection in pool]
        self._idle.clear()
        for connection in idle:
            connection.close()
        for connection in idle:
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()

    def _split(self, url: str) -> tuple[Origin, str]:
        """(origin, path and query) of a URL, remembered per URL prefix up to the path."""
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        key = f"{scheme}://{authority}"
        origin = self._origins.get(key)
        if origin is None:
            parts = urlsplit(key)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TransportError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
            tls = parts.scheme == "https"
            origin = self._origins[key] = Origin(
                tls, parts.hostname, parts.port or (443 if tls else 80)
            )
        return origin, slash + path if slash else "/"

    async def _connection(
        self, origin: Origin, connect_timeout: float | None, *, fresh: bool = False
    ) -> _Connection:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool and not fresh:
            connection = pool.pop()  # the most recently used: the likeliest still open
            if connection.usable(now, self._idle_seconds):
                return connection
            connection.close()
        tls = None
        if origin.tls:
            tls = self._tls or _default_tls()
        try:
            async with asyncio.timeout(connect_timeout):
                sock = await _connected_socket(origin)
                try:
                    reader, writer = await asyncio.open_connection(
                        sock=sock, ssl=tls, limit=MAX_HEAD_BYTES,
                        server_hostname=(self._server_hostname or origin.host) if tls else None,
                    )  # fmt: skip
                except BaseException:
                    sock.close()
                    raise
        except OSError as error:  # refused, unreachable, no such host, TLS refused
            kind = TlsRefused if isinstance(error, ssl.SSLError) else ConnectError
            raise kind(f"cannot connect to {origin.authority} ({type(error).__name__})") from error
        return _Connection(origin, reader, writer)

    @staticmethod
    async def _exchange(
        connection: _Connection, message: bytes, method: str
    ) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be kept). On any failure the
        connection is closed (its state is unknown): _Stale if it was a kept one that
        the server had closed before answering anything, else TransportError (or the
        TimeoutError or cancellation that interrupted it)."""
        try:
            return await _send_and_read(connection, message, method)
        except BaseException as error:
            connection.close()
            if connection.reused and _nothing_received(error):
                raise _Stale from None
            if isinstance(error, asyncio.LimitOverrunError):
                raise ProtocolError("a line of the answer is too long") from None
            if isinstance(error, OSError | asyncio.IncompleteReadError):
                raise _transport_error(error, connection.origin) from error
            raise


async def _send_and_read(
    connection: _Connection, message: bytes, method: str
) -> tuple[int, bytes, bool]:
    writer, reader = connection.writer, connection.reader
    writer.write(message)
    await writer.drain()
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        version, status, headers = _parse_head(head)
        if status >= 200 or status == 101:
            break  # 1xx (100 Continue, 103 Early Hints) come before the answer
    keep = headers.get("connection", "").lower() != "close" and (
        version == "HTTP/1.1" or headers.get("connection", "").lower() == "keep-alive"
    )
    if method == "HEAD" or status in (204, 304):
        return status, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, await _read_chunked(reader), keep
    length = headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise ProtocolError("a Content-Length that is not a number") from None
        if not 0 <= size <= MAX_BODY_BYTES:
            raise ProtocolError(f"an answer of {size} bytes")
        return status, await reader.readexactly(size), keep
    # Neither: the body ends when the server closes the connection.
    parts: list[bytes] = []
    total = 0
    while part := await reader.read(64 * 1024):
        total += len(part)
        if total > MAX_BODY_BYTES:
            raise ProtocolError("an answer too large")
        parts.append(part)
    return status, b"".join(parts), False


async def _connected_socket(origin: Origin) -> socket.socket:
    """A TCP connection to the host's addresses, IPv6 and IPv4 interleaved, the next
    tried 0.25 s into the last (RFC 8305, as aiohttp does): a host whose IPv6 route
    drops packets is still reached over IPv4 at once. uvloop's open_connection has no
    `happy_eyeballs_delay`, so the socket is made first."""
    loop = asyncio.get_running_loop()
    addresses = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
    return await aiohappyeyeballs.start_connection(
        addresses, happy_eyeballs_delay=0.25, interleave=1
    )


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError("not an HTTP/1.x answer")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return version, int(code), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError("a chunk size that is not a number") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise ProtocolError("an answer too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("a chunk without its line end")


def _nothing_received(error: BaseException) -> bool:
    """The server closed before any byte of an answer: safe to send again."""
    if isinstance(error, asyncio.IncompleteReadError):
        return not error.partial
    return isinstance(error, ConnectionResetError | BrokenPipeError)


class _Stale(Exception):
    """A kept connection turned out closed before the request reached the server."""


def _transport_error(
    error: OSError | asyncio.IncompleteReadError, origin: Origin
) -> TransportError:
    if isinstance(error, asyncio.IncompleteReadError):
        return TransportError(f"{origin.authority} closed the connection mid-answer")
    return TransportError(f"connection to {origin.authority} failed ({type(error).__name__})")


_DEFAULT_TLS: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    """certifi's roots, as aiogram's AiohttpSession (made once: loading them takes ms)."""
    global _DEFAULT_TLS
    if _DEFAULT_TLS is None:
        _DEFAULT_TLS = ssl.create_default_context(cafile=certifi.where())
    return _DEFAULT_TLS
