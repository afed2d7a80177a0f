"""Which user-given base URLs the gateway may connect to: public endpoints only.

Users may bring their own OpenAI-compatible endpoint (Ollama, vLLM,
OpenRouter…). The gateway is the one component that connects to such a URL, so
it must not become a way into our own network: private, loopback, link-local,
metadata and cluster addresses are refused, whether written as an IP literal
(in any spelling), as a name that resolves to one, or reached through a
redirect (the gateway sends with `allow_redirects=False` and treats a 3xx as a
refusal). The operator can allow named internal endpoints (an in-cluster
Ollama) with GATEWAY_ALLOWED_ENDPOINTS.

Three layers, because each closes a gap the others leave:
- `normalize_base_url`: syntax, for the wizard (scheme, host, no credentials).
- `EndpointGuard.check`: before every request, without I/O: names such as
  `localhost` and `*.svc`, and IP literals, which aiohttp connects to without
  asking any resolver.
- `EndpointGuard.connector`: at connection time, the resolver drops refused
  addresses, so a name cannot change its answer (DNS rebinding) between a check
  and the connection.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from manager_bot.services.errors import EndpointProblem, Param

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BASE_URL_MAX_LENGTH = 300
# The gateway appends paths and `?api-version=…` to a base URL, so the URL of a
# request may be longer than a base URL.
REQUEST_URL_MAX_LENGTH = 2048

_ONLY_PUBLIC = "only public endpoints can be used"

# Written out rather than read from `is_global`/`is_private`: those changed
# between patch releases (CVE-2024-4032 fixed 3.11.10), and `is_private` is
# False for the shared address space 100.64.0.0/10.
_REFUSED_IPV4 = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # carrier-grade NAT, shared address space (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. the 169.254.169.254 metadata service
        "172.16.0.0/12",  # private (RFC 1918)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private (RFC 1918)
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast 255.255.255.255
    )
)
_REFUSED_IPV6 = tuple(
    ipaddress.IPv6Network(cidr)
    for cidr in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, incl. Teredo
        "2001:db8::/32",  # documentation
        "2002::/16",  # 6to4 (deprecated, RFC 7526): relays route to the embedded IPv4
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing SIDs
        "fc00::/7",  # unique local addresses (ULA)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
# IPv6 that is routed on the internet at all; anything outside is refused.
_GLOBAL_UNICAST_IPV6 = ipaddress.IPv6Network("2000::/3")
# IPv6 forms that carry an IPv4 address in their last 32 bits and reach it.
_IPV4_EMBEDDING_IPV6 = tuple(
    ipaddress.IPv6Network(cidr)
    for cidr in (
        "::/96",  # IPv4-compatible (deprecated): ::127.0.0.1
        "::ffff:0:0/96",  # IPv4-mapped: ::ffff:127.0.0.1
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # well-known NAT64 prefix: public hosts on IPv6-only clusters
    )
)

# Names that only mean something inside our own network.
_REFUSED_NAMES = ("localhost", "localhost.localdomain")
_REFUSED_NAME_SUFFIXES = (
    ".localhost",
    ".local",
    ".cluster.local",
    ".internal",  # also metadata.google.internal
    ".svc",
    ".home.arpa",
    ".localdomain",
)

_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# What makes a host an IPv4 address to URL parsers and libc's inet_aton: a
# last label that is a number (decimal, octal with a leading 0, or hex).
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_CANONICAL_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


class EndpointRefused(Exception):
    """The URL may not be used.

    `problem` (and `params`: a host, a limit) is what the manager tells a user, in
    their language (views/errors.py). `str(error)` is the same reason in English,
    for the log and the gateway's answers. Both name at most the host the user
    wrote, never credentials, a query string, or the addresses a name resolved to
    (that would map our network for a prober).
    """

    def __init__(self, reason: str, problem: EndpointProblem, **params: Param) -> None:
        super().__init__(reason)
        self.problem = problem
        self.params = params


class EndpointRefusedError(EndpointRefused, OSError):
    """A refusal raised inside aiohttp's connector (see `EndpointGuard.connector`).

    It is an OSError because aiohttp only wraps OSErrors from a resolver into
    `ClientConnectorDNSError`; anything else would escape unwrapped from deep
    inside the connection pool. Recognise it with `refusal_of`.
    """

    def __init__(self, refusal: EndpointRefused) -> None:
        OSError.__init__(self, errno.EACCES, str(refusal))
        self.reason = str(refusal)
        self.problem = refusal.problem
        self.params = refusal.params

    def __str__(self) -> str:
        return self.reason


def refusal_of(error: BaseException) -> EndpointRefused | None:
    """The refusal behind `error`, or None if `error` is something else.

    A refusal at connection time reaches the caller of `session.request(...)`
    as `aiohttp.ClientConnectorDNSError` (a `ClientConnectorError`, itself an
    `OSError`) whose `os_error` and `__cause__` are our `EndpointRefusedError`.
    This follows `os_error`, `__cause__` and `__context__` to find it, so it
    keeps working if the caller wraps the error once more.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EndpointRefused):
            return current
        if isinstance(current, aiohttp.ClientConnectorError):
            pending.append(current.os_error)
        pending.extend((current.__cause__, current.__context__))
    return None


@dataclass(frozen=True)
class EndpointPolicy:
    """What the operator decided: which internal endpoints are allowed, what else is refused."""

    # GATEWAY_ALLOWED_ENDPOINTS: "host" or "host:port" ("[fd00::1]:11434" for
    # IPv6). A URL whose host (and port, when the entry names one) matches is
    # allowed whatever it resolves to. Entries are normalised on construction.
    allowed: frozenset[str] = frozenset()
    # K8S_CLUSTER_CIDRS: pod and service networks, refused besides the built-in ones.
    blocked_networks: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(_allow_entry(e) for e in self.allowed))

    @classmethod
    def from_settings(cls, allowed: Iterable[str], blocked_cidrs: Iterable[str]) -> EndpointPolicy:
        """Build from setting values; raises ValueError naming a malformed entry."""
        networks: list[Network] = []
        for cidr in blocked_cidrs:
            if not cidr.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{cidr.strip()!r} is not a network like 10.96.0.0/12") from None
        return cls(
            allowed=frozenset(entry for entry in allowed if entry.strip()),
            blocked_networks=tuple(networks),
        )

    def allows(self, host: str, port: int | None) -> bool:
        """Whether the operator allowed this host (as yarl spells it) on this port."""
        key = _host_key(host)
        return key in self.allowed or (port is not None and f"{key}:{port}" in self.allowed)


def normalize_base_url(url: str) -> str:
    """The base URL as it will be stored, or EndpointRefused saying what is wrong.

    Syntax only: whether the host may be used is `EndpointGuard`'s decision.
    """
    target = _parse(url, allow_query=False, max_length=BASE_URL_MAX_LENGTH)
    return str(target.url).rstrip("/")


def address_refused(address: Address, policy: EndpointPolicy) -> bool:
    """Whether connecting to `address` could reach something that is not the public internet."""
    if any(address in network for network in policy.blocked_networks):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_refused(embedded, policy)
        if address not in _GLOBAL_UNICAST_IPV6 or any(address in n for n in _REFUSED_IPV6):
            return True
        return address.is_site_local or _refused_by_stdlib(address)
    if any(address in network for network in _REFUSED_IPV4):
        return True
    return _refused_by_stdlib(address)


class GuardedResolver(AbstractResolver):
    """A resolver that drops refused addresses from what the wrapped resolver returns.

    Hosts the policy allows are resolved unfiltered. When no address is left,
    it raises `EndpointRefusedError`, which aiohttp turns into a
    `ClientConnectorDNSError`; see `refusal_of`.
    """

    def __init__(
        self, inner: AbstractResolver, *, policy: EndpointPolicy, owns_inner: bool
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._owns_inner = owns_inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._policy.allows(host, port):
            return await self._inner.resolve(host, port, family)
        try:
            # Names such as "localhost", and hex spellings like "0x7f.1" (which
            # aiohttp does not take for an IP and hands to the resolver).
            _judge_host(_host_key(host), self._policy)
        except EndpointRefused as refusal:
            raise EndpointRefusedError(refusal) from None
        results = await self._inner.resolve(host, port, family)
        kept = [result for result in results if not _result_refused(result, self._policy)]
        if not kept:
            log.warning("refused a connection to %s: none of its addresses is public", host)
            raise EndpointRefusedError(_resolves_inside(host))
        return kept

    async def close(self) -> None:
        if self._owns_inner:
            await self._inner.close()


class EndpointGuard:
    """Decides, before and while connecting, whether a user endpoint may be reached.

    How the gateway uses it, and why each step is needed:

    1. `guard.check(url)` before every request. aiohttp does not call any
       resolver for an IP-literal host (`http://10.0.0.1/`), so the connector
       below never sees those: `check` is what refuses them.
    2. `session.request(..., allow_redirects=False)` on a `ClientSession` built
       with `connector=guard.connector()`, treating any 3xx from a user
       endpoint as a refusal: a redirect could point anywhere.
    3. Catch `aiohttp.ClientError` (or `OSError`) around the request and ask
       `refusal_of(error)`: a non-None answer is an `EndpointRefused` to show
       the user; anything else is an ordinary connection failure.

    Do not give such a session a proxy (`proxy=`, or `trust_env=True` with
    HTTP(S)_PROXY set): through a proxy the connector resolves the proxy's
    name, and the proxy resolves the user's host unguarded.
    """

    def __init__(self, policy: EndpointPolicy, *, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver  # owned by the caller when given

    @property
    def policy(self) -> EndpointPolicy:
        return self._policy

    def check(self, url: str) -> None:
        """Refuse `url` if its syntax or its host, judged without DNS, is not allowed.

        Cheap and synchronous: run it before every request. A query string is
        allowed here, unlike in a base URL.
        """
        self._checked(url)

    async def check_resolved(self, url: str) -> None:
        """`check`, then refuse if ANY address the name resolves to is refused.

        For early feedback in the wizard; a name that cannot be looked up is
        refused too, since nothing could connect to it. Requests still need the
        guarded connector: the answer may change by the time they connect.
        """
        target = self._checked(url)
        if target is None or _is_ip_literal(target.host):
            return
        resolver = self._resolver or DefaultResolver()
        try:
            results = await resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        except OSError:
            raise EndpointRefused(
                f"{target.host} could not be found: check the spelling of the address",
                EndpointProblem.NOT_FOUND, host=target.host,
            ) from None  # fmt: skip
        finally:
            if self._resolver is None:
                await resolver.close()
        if not results:
            raise EndpointRefused(
                f"{target.host} has no address to connect to",
                EndpointProblem.NO_ADDRESS, host=target.host,
            )  # fmt: skip
        if any(_result_refused(result, self._policy) for result in results):
            raise _resolves_inside(target.host)

    def _checked(self, url: str) -> _Target | None:
        """The parsed URL if it passed `check`, None if the operator allowed its host."""
        target = _parse(url, allow_query=True, max_length=REQUEST_URL_MAX_LENGTH)
        if self._policy.allows(target.host, target.port):
            return None
        _judge_host(target.host, self._policy)
        return target

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A TCPConnector whose resolver refuses disallowed addresses at connection time.

        Checking a name and then connecting resolves it twice; a name that
        answers a public address first and 127.0.0.1 next (DNS rebinding) would
        pass a check alone. Here the addresses connected to are the ones judged.

        When no allowed address is left, the request fails with
        `aiohttp.ClientConnectorDNSError` whose `os_error` (and `__cause__`) is
        an `EndpointRefusedError`, an `EndpointRefused`: use `refusal_of(error)`
        to recognise it. Allowed hosts are resolved unfiltered. IP literals are
        never resolved by aiohttp, hence `check` before each request.

        `kwargs` go to `aiohttp.TCPConnector`; the resolver is the guard's.
        """
        if "resolver" in kwargs:
            raise TypeError("give the resolver to EndpointGuard, not to connector()")
        inner = self._resolver or DefaultResolver()
        guarded = GuardedResolver(inner, policy=self._policy, owns_inner=self._resolver is None)
        return _GuardedConnector(guarded_resolver=guarded, **kwargs)


class _GuardedConnector(aiohttp.TCPConnector):
    """Closes its resolver on close: TCPConnector only closes resolvers it made itself."""

    def __init__(self, *, guarded_resolver: GuardedResolver, **kwargs: Any) -> None:
        super().__init__(resolver=guarded_resolver, **kwargs)
        self._guarded_resolver = guarded_resolver

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._guarded_resolver.close()


@dataclass(frozen=True)
class _Target:
    url: URL
    host: str  # as `_host_key` spells it: lower case, no trailing dot, IPv6 in brackets
    port: int


def _parse(url: str, *, allow_query: bool, max_length: int) -> _Target:
    """Parse as aiohttp will (yarl), so what is judged is what gets connected to."""
    text = url.strip()
    if not text:
        raise EndpointRefused("The address is empty.", EndpointProblem.EMPTY)
    if len(text) > max_length:
        raise EndpointRefused(
            f"The address is longer than {max_length} characters.",
            EndpointProblem.TOO_LONG, limit=max_length,
        )  # fmt: skip
    if any(character.isspace() or not character.isprintable() for character in text):
        raise EndpointRefused(
            "The address must not contain spaces or invisible characters.", EndpointProblem.SPACES
        )
    scheme, separator, _ = text.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise EndpointRefused(
            "The address must start with http:// or https://.", EndpointProblem.NOT_HTTP
        )
    if "#" in text:
        raise EndpointRefused("The address must not contain a '#' part.", EndpointProblem.FRAGMENT)
    if "?" in text and not allow_query:
        raise EndpointRefused("The address must not contain a '?' part.", EndpointProblem.QUERY)
    try:
        parsed = URL(text)
        port = parsed.port
    except ValueError:
        raise EndpointRefused(
            "This is not a valid web address.", EndpointProblem.NOT_A_URL
        ) from None
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise EndpointRefused(
            "The address must not contain a user name or password; the key is asked for separately.",
            EndpointProblem.CREDENTIALS,
        )
    if not parsed.raw_host:
        raise EndpointRefused("The address has no host name.", EndpointProblem.NO_HOST)
    if not port:  # None only for schemes without a default port, excluded above
        raise EndpointRefused("The port must be between 1 and 65535.", EndpointProblem.BAD_PORT)
    host = _host_key(parsed.raw_host)
    if host.startswith("[") and "%" in host:
        raise EndpointRefused(
            "The address must not contain an IPv6 zone ('%').", EndpointProblem.IPV6_ZONE
        )
    if not _valid_host(host):
        raise EndpointRefused("The host name is not valid.", EndpointProblem.BAD_HOST)
    return _Target(url=parsed, host=host, port=port)


def _host_key(host: str) -> str:
    """One spelling per host: lower case, no trailing dot, IPv6 compressed in brackets."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" not in host:
        return host
    try:
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    except ValueError:
        return f"[{host}]"


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    labels = host.split(".")
    return len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _is_ip_literal(host: str) -> bool:
    return host.startswith("[") or bool(_NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]))


def _judge_host(host: str, policy: EndpointPolicy) -> None:
    """Refuse a host (as `_host_key` spells it) that is not allowed, without DNS."""
    if host.startswith("["):
        if address_refused(ipaddress.IPv6Address(host[1:-1]), policy):
            raise EndpointRefused(
                f"{host} is a private, local or reserved address; {_ONLY_PUBLIC}.",
                EndpointProblem.PRIVATE_ADDRESS, host=host,
            )  # fmt: skip
        return
    if _is_ip_literal(host):
        # libc's inet_aton (and so getaddrinfo) reads "2130706433", "0x7f.1" and
        # "127.1" as 127.0.0.1; only the four-decimal form is unambiguous.
        if not _CANONICAL_IPV4.fullmatch(host):
            raise EndpointRefused(
                f"{host} is not a usual IP address: write it as four numbers from 0 to 255 "
                "separated by dots.",
                EndpointProblem.UNUSUAL_IP, host=host,
            )  # fmt: skip
        if address_refused(ipaddress.IPv4Address(host), policy):
            raise EndpointRefused(
                f"{host} is a private, local or reserved address; {_ONLY_PUBLIC}.",
                EndpointProblem.PRIVATE_ADDRESS, host=host,
            )  # fmt: skip
        return
    if host in _REFUSED_NAMES or host.endswith(_REFUSED_NAME_SUFFIXES):
        raise EndpointRefused(
            f"{host} is a name inside a local network; {_ONLY_PUBLIC}.",
            EndpointProblem.LOCAL_NAME, host=host,
        )  # fmt: skip
    if "." not in host:
        # A name without a dot is completed with the search domains of the
        # gateway's own network ("ollama" -> ollama.<namespace>.svc.cluster.local).
        raise EndpointRefused(
            f"{host} is not a full domain name; {_ONLY_PUBLIC}.",
            EndpointProblem.NOT_FULL_NAME, host=host,
        )  # fmt: skip


def _result_refused(result: ResolveResult, policy: EndpointPolicy) -> bool:
    try:
        address = ipaddress.ip_address(result["host"])
    except ValueError:
        return True  # a zone-scoped or unreadable address is not a public one
    return address_refused(address, policy)


def _resolves_inside(host: str) -> EndpointRefused:
    return EndpointRefused(
        f"{host} points to a private, local or reserved address; {_ONLY_PUBLIC}.",
        EndpointProblem.RESOLVES_INSIDE, host=host,
    )  # fmt: skip


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64), if any."""
    if any(address in network for network in _IPV4_EMBEDDING_IPV6):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _refused_by_stdlib(address: Address) -> bool:
    """The stdlib's own verdicts, on top of the explicit lists (they only add refusals)."""
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _allow_entry(entry: str) -> str:
    """An allow-list entry as `EndpointPolicy.allows` compares it: "host" or "host:port"."""
    text = entry.strip()
    try:
        parsed = URL(f"http://{text}")
        port = parsed.explicit_port
    except ValueError:
        raise ValueError(f"{entry!r} is not a host or host:port") from None
    if (
        not parsed.raw_host
        or parsed.raw_user is not None
        or parsed.path not in ("", "/")
        or parsed.query_string
        or parsed.fragment
        or port == 0
    ):
        raise ValueError(f"{entry!r} is not a host or host:port")
    host = _host_key(parsed.raw_host)
    return host if port is None else f"{host}:{port}"
