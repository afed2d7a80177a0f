"""KeepAliveClient over real sockets on 127.0.0.1: aiohttp's own server where it will
do, a raw asyncio server where the test needs a misbehaving one (answers without a
length, connections dropped at the worst moment, a stale answer arriving late)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from manager_bot.http_keepalive import (
    ConnectError,
    KeepAliveClient,
    Origin,
    ProtocolError,
    TransportError,
)
from tests.fakes.kubernetes_api import CertificateAuthority, _pem_files
from tests.fakes.loopback import free_port, serve_on_loopback
from tests.fakes.waiting import until

TOKEN_PATH = "/bot123456:SECRET-token-part/sendMessage"


@asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    if tls is None:
        runner, url = await serve_on_loopback(app)
    else:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield url
    finally:
        await runner.cleanup()


Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def raw_server(conversation: Conversation) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A server that runs `conversation(reader, writer, connection_number)` per
    connection; yields its URL and every request head it read (via `read_request`)."""
    heads: list[bytes] = []
    count = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        reader.heads = heads  # type: ignore[attr-defined]
        try:
            await conversation(reader, writer, count)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body); None if the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    reader.heads.append(head)  # type: ignore[attr-defined]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def replying(raw: bytes) -> Conversation:
    """Reads one request, writes `raw` (whatever it is) and closes."""

    async def conversation(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()

    return conversation


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def client() -> AsyncIterator[KeepAliveClient]:
    client = KeepAliveClient()
    yield client
    await client.close()


async def test_a_json_call_and_its_answer_over_one_kept_connection(
    client: KeepAliveClient,
) -> None:
    seen: list[tuple[str, str, bytes, object]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((request.method, request.path, body, peer))
        return web.json_response({"ok": True, "got": body.decode(), "type": request.content_type})

    async with aiohttp_server(echo) as url:
        for number in range(3):
            status, body = await client.request(
                "POST", url + TOKEN_PATH, body=b'{"n": %d}' % number,
                content_type="application/json", timeout=5,
            )  # fmt: skip
            assert status == 200
            assert body == b'{"ok": true, "got": "{\\"n\\": %d}", "type": "application/json"}' % (
                number
            )
    assert [(method, path, body) for method, path, body, _ in seen] == [
        ("POST", TOKEN_PATH, b'{"n": %d}' % number) for number in range(3)
    ]
    assert len({peer for *_, peer in seen}) == 1  # one connection served all three


async def test_a_chunked_answer_is_joined(client: KeepAliveClient) -> None:
    async def chunks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b'{"ok": ', b"true, ", b'"result": "' + b"x" * 70000 + b'"}'):
            await response.write(part)
        await response.write_eof()
        return response

    async with aiohttp_server(chunks) as url:
        status, body = await client.request("GET", url + "/chunked", timeout=5)
        again, _ = await client.request("GET", url + "/chunked", timeout=5)
    assert status == again == 200
    assert body == b'{"ok": true, "result": "' + b"x" * 70000 + b'"}'


async def test_an_error_status_is_an_answer_not_an_exception(client: KeepAliveClient) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error_code": 429}, status=429)

    async with aiohttp_server(refuse) as url:
        status, body = await client.request("POST", url + TOKEN_PATH, timeout=5)
    assert status == 429
    assert b'"error_code": 429' in body


async def test_an_answer_without_a_length_ends_with_the_connection(
    client: KeepAliveClient,
) -> None:
    old_server = replying(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"ok": true}')
    async with raw_server(old_server) as (url, heads):
        first = await client.request("POST", url + TOKEN_PATH, timeout=5)
        second = await client.request("POST", url + TOKEN_PATH, timeout=5)
    assert first == second == (200, b'{"ok": true}')
    assert len(heads) == 2


async def test_connection_close_is_honoured(client: KeepAliveClient) -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(b"%d" % n, "Connection: close"))
            await writer.drain()
            return

    async with raw_server(closing) as (url, _):
        answers = [await client.request("GET", url + "/", timeout=5) for _ in range(3)]
    assert answers == [(200, b"1"), (200, b"2"), (200, b"3")]  # a connection each


async def test_a_kept_connection_the_server_dropped_meanwhile_is_replaced(
    client: KeepAliveClient,
) -> None:
    """The server reads the second request on the kept connection and closes without a
    word (an idle timeout racing the request): the call is made again on a new one."""

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"answer on connection %d" % n))
        await writer.drain()
        await read_request(reader)  # ... and close without answering

    async with raw_server(once) as (url, heads):
        assert await client.request("POST", url + TOKEN_PATH, timeout=5) == (
            200, b"answer on connection 1",
        )  # fmt: skip
        assert await client.request("POST", url + TOKEN_PATH, timeout=5) == (
            200, b"answer on connection 2",
        )  # fmt: skip
    assert len(heads) == 3  # the dropped one, then the same request again


async def test_a_new_connection_closed_before_any_answer_is_an_error_not_a_retry(
    client: KeepAliveClient,
) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async with raw_server(mute) as (url, heads):
        with pytest.raises(TransportError) as failed:
            await client.request("POST", url + TOKEN_PATH, timeout=5)
    assert len(heads) == 1  # sent once: a request a server may have acted on is not repeated
    assert "closed the connection" in str(failed.value)
    assert "SECRET" not in str(failed.value)


async def test_an_answer_cut_short_is_an_error(client: KeepAliveClient) -> None:
    short = replying(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok": tr')
    async with raw_server(short) as (url, _):
        with pytest.raises(TransportError, match="mid-answer"):
            await client.request("POST", url + TOKEN_PATH, timeout=5)


async def test_a_timeout_closes_the_connection_so_a_late_answer_is_never_read_as_the_next(
    client: KeepAliveClient,
) -> None:
    ended: list[int] = []

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"slow":
                await asyncio.sleep(0.5)
            writer.write(answer(b"answer to " + body))
            await writer.drain()
        ended.append(n)  # the client closed this connection

    async with raw_server(late) as (url, _):
        with pytest.raises(TimeoutError):
            await client.request("POST", url + "/", body=b"slow", timeout=0.1)
        assert await client.request("POST", url + "/", body=b"fast", timeout=5) == (
            200, b"answer to fast",
        )  # fmt: skip
        await until(lambda: ended == [1], timeout=5)  # not left open


async def test_a_refused_connection_names_the_host_never_the_path(
    client: KeepAliveClient,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectError) as failed:
        await client.request("POST", url + TOKEN_PATH, timeout=5)
    assert "cannot connect to 127.0.0.1" in str(failed.value)
    assert "SECRET" not in str(failed.value) and "bot123456" not in str(failed.value)


async def test_garbage_instead_of_http_is_a_protocol_error(client: KeepAliveClient) -> None:
    async with raw_server(replying(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as (url, _):
        with pytest.raises(ProtocolError):
            await client.request("POST", url + "/", timeout=5)


async def test_at_most_limit_connections_at_once_and_every_call_answered() -> None:
    open_now = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while (body := await read_request(reader)) is not None:
                await asyncio.sleep(0.05)
                writer.write(answer(body))
                await writer.drain()
        finally:
            open_now -= 1

    client = KeepAliveClient(limit=2)
    try:
        async with raw_server(slow) as (url, _):
            answers = await asyncio.gather(
                *(client.request("POST", url + "/", body=b"%d" % n, timeout=10) for n in range(6))
            )
    finally:
        await client.close()
    assert sorted(answers) == sorted((200, b"%d" % n) for n in range(6))
    assert peak == 2


async def test_tls_with_the_given_roots_and_refused_with_others() -> None:
    authority = CertificateAuthority("test-ca")
    served = authority.issue("127.0.0.1", server=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with _pem_files(served) as (cert_file, key_file):
        server_tls.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cadata=authority.cert_pem.decode())

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"over tls")

    async with aiohttp_server(hello, tls=server_tls) as url:
        trusted = KeepAliveClient(ssl_context=trusting)
        default = KeepAliveClient()  # certifi's roots: this CA is not among them
        try:
            assert await trusted.request("GET", url + "/", timeout=5) == (200, b"over tls")
            with pytest.raises(ConnectError, match="SSLCertVerificationError"):
                await default.request("GET", url + "/", timeout=5)
        finally:
            await trusted.close()
            await default.close()


async def test_a_closed_client_refuses_calls() -> None:
    client = KeepAliveClient()
    await client.close()
    with pytest.raises(TransportError, match="closed"):
        await client.request("GET", "http://127.0.0.1:1/", timeout=1)


async def test_headers_are_sent_and_one_with_a_line_break_is_refused_unsent(
    client: KeepAliveClient,
) -> None:
    async with raw_server(_echo_heads) as (url, heads):
        await client.request(
            "GET", url + "/", headers={"Authorization": "Bearer abc", "User-Agent": "kube/1"},
            timeout=5,
        )  # fmt: skip
        with pytest.raises(TransportError, match="line break"):
            await client.request(
                "GET", url + "/", headers={"X-Injected": "a\r\nHost: evil"}, timeout=5
            )
    assert len(heads) == 1
    lines = heads[0].decode().split("\r\n")
    assert "Authorization: Bearer abc" in lines
    assert [line for line in lines if line.lower().startswith("user-agent:")] == [
        "User-Agent: kube/1"
    ]  # the caller's, not a second one of ours


async def _echo_heads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader) is not None:
        writer.write(answer(b"{}"))
        await writer.drain()


async def test_after_a_burst_connections_idle_too_long_are_closed_though_never_reused() -> None:
    """Three calls at once open three connections; then calls one at a time, each soon
    after the last, keep reusing the newest: the two others, never picked again, are
    closed once idle longer than idle_seconds, while the newest stays open."""
    ended: list[int] = []
    gate = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"burst":
                await gate.wait()
            writer.write(answer(b"%d" % n))
            await writer.drain()
        ended.append(n)

    client = KeepAliveClient(idle_seconds=0.5)
    try:
        async with raw_server(held) as (url, heads):
            burst = [
                asyncio.create_task(client.request("POST", url + "/", body=b"burst", timeout=5))
                for _ in range(3)
            ]
            await until(lambda: len(heads) == 3)
            gate.set()
            await asyncio.gather(*burst)
            answered_by = set()
            for _ in range(10):  # a second in all, never 0.5 s between two calls
                _, body = await client.request("POST", url + "/", body=b"one", timeout=5)
                answered_by.add(body)
                await asyncio.sleep(0.1)
            await until(lambda: len(ended) == 2, timeout=5)
            assert len(answered_by) == 1 and int(answered_by.pop()) not in ended
            assert len(heads) == 13  # no new connection was needed
    finally:
        await client.close()


def test_the_host_header_brackets_an_ipv6_address_and_omits_a_default_port() -> None:
    assert Origin(tls=False, host="::1", port=8080).authority == "[::1]:8080"
    assert Origin(tls=True, host="api.telegram.org", port=443).authority == "api.telegram.org"
    assert Origin(tls=False, host="127.0.0.1", port=443).authority == "127.0.0.1:443"


async def test_a_host_by_name_is_reached_on_whichever_of_its_addresses_answers(
    client: KeepAliveClient,
) -> None:
    """ "localhost" names ::1 and 127.0.0.1 where both exist; the server listens on
    127.0.0.1 only, so any IPv6 attempt is refused and the IPv4 one answers."""
    async with raw_server(_echo_heads) as (url, heads):
        by_name = url.replace("127.0.0.1", "localhost")
        assert await client.request("GET", by_name + "/", timeout=5) == (200, b"{}")
    assert b"Host: localhost:" in heads[0]
