"""User endpoints: public ones are used, our own network is refused however it is spelled.

Names are resolved by a fake resolver (no DNS here); the only server is ours,
on 127.0.0.1, which is exactly what a user must not be able to reach.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from manager_bot.gateway.endpoints import (
    EndpointGuard,
    EndpointPolicy,
    EndpointRefused,
    GuardedResolver,
    address_refused,
    normalize_base_url,
    refusal_of,
)
from tests.fakes.loopback import free_port, serve_on_loopback


class FakeResolver(AbstractResolver):
    """Answers from a table, like DNS would; records what it was asked."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        addresses = self.names.get(host.rstrip("."))
        if addresses is None:
            raise OSError(socket.EAI_NONAME, f"{host} is not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        self.closed = True


NAMES = {
    "evil.example": ["127.0.0.1"],
    "good.example": ["127.0.0.1"],
    "public.example": ["8.8.8.8", "2606:4700::1111"],
    "half.example": ["8.8.8.8", "10.0.0.7"],
}


def guard(*allowed: str, blocked: tuple[str, ...] = ()) -> tuple[EndpointGuard, FakeResolver]:
    resolver = FakeResolver(NAMES)
    policy = EndpointPolicy.from_settings(allowed, blocked)
    return EndpointGuard(policy, resolver=resolver), resolver


@pytest.fixture
async def our_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 standing for something inside our network; yields its port and hits."""
    hits: list[str] = []

    async def models(request: web.Request) -> web.Response:
        hits.append(request.host)
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner, base_url = await serve_on_loopback(app)
    try:
        yield int(base_url.rsplit(":", 1)[1]), hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[fd00::1]",
        "[fe80::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:a01:203]",  # ::ffff:10.1.2.3
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
        "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
        "[::]",
        "224.0.0.1",
        "255.255.255.255",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "127.0.0.1.",
    ],
)
def test_an_internal_ip_in_any_spelling_is_refused(host: str) -> None:
    endpoints, _ = guard()
    with pytest.raises(EndpointRefused):
        endpoints.check(f"http://{host}:11434/v1")


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/v1",
        "https://[2606:4700::1111]/v1",
        "https://[64:ff9b::808:808]/v1",  # 8.8.8.8 through NAT64
        "https://api.openai.com/v1",
        "https://api.openai.com/v1/chat/completions?api-version=2024-10-21",
        "https://API.OpenAI.com./v1",
    ],
)
def test_a_public_endpoint_passes_the_check(url: str) -> None:
    endpoints, resolver = guard()
    endpoints.check(url)
    assert resolver.asked == []  # check() never resolves


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST.",
        "api.localhost",
        "printer.local",
        "foo.svc.cluster.local",
        "ollama.default.svc",
        "metadata.google.internal",
        "ollama",  # completed with the cluster's search domains
    ],
)
def test_a_name_of_our_own_network_is_refused_without_dns(host: str) -> None:
    endpoints, resolver = guard()
    with pytest.raises(EndpointRefused):
        endpoints.check(f"http://{host}:11434/v1")
    assert resolver.asked == []


def test_the_reason_is_plain_and_carries_no_secret() -> None:
    endpoints, _ = guard()
    with pytest.raises(EndpointRefused) as refused:
        endpoints.check("http://127.0.0.1/v1?key=sk-secret")
    assert str(refused.value).startswith("127.0.0.1 is a private, local or reserved address")
    assert "sk-secret" not in str(refused.value)
    with pytest.raises(EndpointRefused) as refused:
        endpoints.check("http://me:sk-secret@api.example.com/v1")
    assert "sk-secret" not in str(refused.value)


async def test_a_name_pointing_inside_is_refused_once_resolved() -> None:
    endpoints, _ = guard()
    endpoints.check("http://evil.example/v1")  # a name alone says nothing
    with pytest.raises(EndpointRefused, match=r"evil\.example points to a private"):
        await endpoints.check_resolved("http://evil.example/v1")
    with pytest.raises(EndpointRefused, match=r"half\.example"):
        await endpoints.check_resolved("http://half.example/v1")  # any address inside
    with pytest.raises(EndpointRefused, match="could not be found"):
        await endpoints.check_resolved("http://missing.example/v1")
    await endpoints.check_resolved("https://public.example/v1")


async def test_an_allowed_internal_endpoint_is_not_resolved_nor_refused() -> None:
    endpoints, resolver = guard("good.example", "[fd00::1]")
    await endpoints.check_resolved("http://good.example:11434/v1")
    endpoints.check("http://[fd00:0::1]:8000/v1")
    assert resolver.asked == []


async def test_an_allowed_host_with_a_port_is_allowed_on_that_port_only() -> None:
    endpoints, _ = guard("good.example:11434", "10.0.0.5:8000")
    await endpoints.check_resolved("http://good.example:11434/v1")
    endpoints.check("http://10.0.0.5:8000/v1")
    with pytest.raises(EndpointRefused):
        await endpoints.check_resolved("http://good.example:11435/v1")
    with pytest.raises(EndpointRefused):
        await endpoints.check_resolved("http://good.example/v1")  # port 80
    with pytest.raises(EndpointRefused):
        endpoints.check("http://10.0.0.5:22/")


async def test_the_connector_connects_to_an_allowed_host_and_refuses_the_rest(
    our_server: tuple[int, list[str]],
) -> None:
    port, hits = our_server
    endpoints, resolver = guard("good.example")
    async with aiohttp.ClientSession(connector=endpoints.connector()) as session:
        async with session.get(f"http://good.example:{port}/v1/models") as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientConnectorDNSError) as failed:
            await session.get(f"http://evil.example:{port}/v1/models", allow_redirects=False)
    refusal = refusal_of(failed.value)
    assert isinstance(refusal, EndpointRefused)
    assert str(refusal).startswith("evil.example points to a private")
    assert hits == [f"good.example:{port}"]
    assert resolver.asked == ["good.example", "evil.example"]
    assert not resolver.closed  # the caller's resolver stays the caller's


async def test_the_connector_honours_the_port_of_an_allow_list_entry(
    our_server: tuple[int, list[str]],
) -> None:
    port, hits = our_server
    endpoints, _ = guard(f"good.example:{port + 1 if port < 65535 else port - 1}")
    async with aiohttp.ClientSession(connector=endpoints.connector()) as session:
        with pytest.raises(aiohttp.ClientError) as failed:
            await session.get(f"http://good.example:{port}/v1/models")
    assert refusal_of(failed.value) is not None
    assert hits == []


async def test_the_connector_refuses_spellings_aiohttp_hands_to_the_resolver(
    our_server: tuple[int, list[str]],
) -> None:
    # aiohttp takes only all-digit hosts for IPv4 and asks the resolver about
    # "0x7f.1", which getaddrinfo would read as 127.0.0.1.
    port, hits = our_server
    endpoints, resolver = guard()
    async with aiohttp.ClientSession(connector=endpoints.connector()) as session:
        for host in ("0x7f.1", "localhost"):
            with pytest.raises(aiohttp.ClientError) as failed:
                await session.get(f"http://{host}:{port}/v1/models")
            assert refusal_of(failed.value) is not None
    assert hits == []
    assert resolver.asked == []


async def test_the_resolver_keeps_only_public_addresses() -> None:
    policy = EndpointPolicy()
    resolver = GuardedResolver(FakeResolver(NAMES), policy=policy, owns_inner=True)
    kept = await resolver.resolve("half.example", 443, socket.AF_UNSPEC)
    assert [result["host"] for result in kept] == ["8.8.8.8"]


async def test_an_ordinary_connection_failure_is_not_a_refusal() -> None:
    endpoints, _ = guard("good.example")
    async with aiohttp.ClientSession(connector=endpoints.connector()) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as failed:
            await session.get(f"http://good.example:{free_port()}/v1/models")
    assert refusal_of(failed.value) is None
    assert refusal_of(ValueError("other")) is None


async def test_cluster_networks_from_settings_are_refused_too() -> None:
    endpoints, _ = guard(blocked=("8.8.8.0/24", " 2606:4700::/32 ", ""))
    for url in ("https://8.8.8.8/v1", "https://[2606:4700::1111]/v1"):
        with pytest.raises(EndpointRefused):
            endpoints.check(url)
    with pytest.raises(EndpointRefused):
        await endpoints.check_resolved("https://public.example/v1")
    endpoints.check("https://1.1.1.1/v1")


def test_malformed_settings_name_the_entry() -> None:
    with pytest.raises(ValueError, match="not-a-cidr"):
        EndpointPolicy.from_settings([], ["not-a-cidr"])
    with pytest.raises(ValueError, match="host/path"):
        EndpointPolicy.from_settings(["host/path"], [])


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("100.127.255.254", True),  # CGNAT: neither is_private nor is_global says so alone
        ("198.18.0.1", True),
        ("8.8.8.8", False),
        ("::ffff:8.8.8.8", False),
        ("64:ff9b::7f00:1", True),
        ("64:ff9b::808:808", False),
        ("fec0::1", True),
        ("ff02::1", True),
        ("2001:db8::1", True),
        ("2606:4700::1111", False),
    ],
)
def test_address_verdicts(address: str, refused: bool) -> None:
    assert address_refused(ipaddress.ip_address(address), EndpointPolicy()) is refused


def test_a_base_url_is_kept_without_its_trailing_slash() -> None:
    assert normalize_base_url("  https://api.openai.com/v1/ ") == "https://api.openai.com/v1"
    assert (
        normalize_base_url("HTTP://Ollama.Example.com:11434") == "http://ollama.example.com:11434"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://api.example.com/v1", "http:// or https://"),
        ("api.example.com/v1", "http:// or https://"),
        ("http:///v1", "no host"),
        ("https://user:sk-secret@api.example.com/v1", "user name or password"),
        ("https://api.example.com/v1#models", "'#'"),
        ("https://api.example.com/v1?key=sk-secret", "'?'"),
        ("https://api.example.com/" + "v" * 300, "longer than 300"),
        ("https://api example.com/v1", "spaces"),
        ("https://api.example.com:0/v1", "port"),
        ("https://[::1/v1", "not a valid"),
        ("http://%31%32%37.0.0.1/v1", "host name is not valid"),
        ("http://[fe80::1%25eth0]/v1", "IPv6 zone"),
    ],
)
def test_a_base_url_is_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(EndpointRefused) as refused:
        normalize_base_url(url)
    assert reason in str(refused.value)
    assert "sk-secret" not in str(refused.value)
