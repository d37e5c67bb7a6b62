"""Which network addresses a service fetches sources from, for whoever submits them.

A service reads URLs that *other* people name, from inside the cluster's network. Without a rule a
job could reach the cluster's own services (Redis, Ray's dashboard, a cloud's metadata endpoint
with its credentials). :class:`AddressRules` refuses every address that is not a public unicast
one: loopback, private (RFC 1918, CGNAT 100.64/10), link-local, unique-local (fc00::/7),
multicast, unspecified, reserved and documentation ranges, and the cloud metadata endpoints, in
every spelling the C resolver takes (``2130706433``, ``0x7f000001``, ``127.1``, ``0177.0.0.1``,
``::ffff:127.0.0.1``, NAT64 and 6to4 forms of a refused IPv4 address, a trailing dot). A name is
checked by every address it resolves to: one refused address refuses the name. Operators open
named hosts, addresses or networks with ``--allow-hosts``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.errors import InvalidInputError, SourceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What a job's error and events say; the target a redirect or playlist led to is never named
# (it would let a caller map the service's network), nor why a connection failed.
BLOCKED = "source blocked: it leads to an address this service does not fetch from"
UNREACHABLE = "could not connect to the source"

# Metadata endpoints that are public addresses (the others are link-local, private or ULA anyway).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, …
        "169.254.170.2",  # AWS ECS task credentials
        "168.63.129.16",  # Azure's wire server
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
_METADATA_NAMES = frozenset(
    (
        "localhost",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
# A host as a URL gives it: a DNS name or dotted numbers, or an IPv6 literal in brackets.
_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")
RESOLVE_TIMEOUT_S = 5.0


class SourceBlockedError(SourceError):
    """A source leads to an address the service does not fetch from."""

    def __init__(self, message: str = BLOCKED) -> None:
        super().__init__(message)


class UnreachableError(SourceError):
    """A source's host could not be resolved or connected to (the reason is not told)."""

    def __init__(self, message: str = UNREACHABLE) -> None:
        super().__init__(message)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (any form the C resolver reads as numbers), or None for a name.

    Raises:
        InvalidInputError: ``host`` has characters no host name has.
    """
    text = host.strip("[]")
    if ":" in text:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            raise InvalidInputError(f"source host {host!r} is not a valid IPv6 address") from None
    if not _NAME.match(text):
        raise InvalidInputError(f"source host {host!r} has characters a host name cannot have")
    try:  # inet_aton reads what getaddrinfo (and so FFmpeg) reads: 127.1, 0x7f000001, 2130706433, 0177.0.0.1
        return ipaddress.IPv4Address(socket.inet_aton(text.rstrip(".")))
    except OSError:
        return None


def embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_refused(ip: IPAddress) -> bool:
    """Whether ``ip`` is not a public unicast address (or is a cloud metadata endpoint)."""
    if ip in _METADATA_ADDRESSES:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return True
        inner = embedded_v4(ip)
        if inner is not None:
            return is_refused(inner)
        if ip.is_site_local:
            return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
    )


def resolve(host: str, port: int, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[IPAddress] | None:
    """Every address ``host`` resolves to (TCP), or None when it does not resolve within ``timeout_s``."""
    found: list[list[IPAddress] | None] = [None]

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        found[0] = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout_s)  # getaddrinfo has no timeout of its own: a slow DNS is left behind
    return found[0] or None


@dataclass(frozen=True)
class AddressRules:
    """Which hosts a service's sources may reach: public addresses, and those the operator opened.

    Attributes:
        networks: addresses opened by ``--allow-hosts`` (single addresses are /32 or /128).
        names: host names opened by ``--allow-hosts`` (lower case, no trailing dot), whatever
            they resolve to.
        resolve_timeout_s: most time to resolve a name.
    """

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S

    @classmethod
    def parse(cls, allow: str | Iterable[str] = "") -> AddressRules:
        """From ``--allow-hosts``: comma-separated host names, addresses and CIDR networks."""
        items = allow.split(",") if isinstance(allow, str) else list(allow)
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for raw in (i.strip() for i in items):
            if not raw:
                continue
            try:
                networks.append(ipaddress.ip_network(raw.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if "/" in raw or ":" in raw or not _NAME.match(raw):
                raise InvalidInputError(
                    f"--allow-hosts takes host names, IP addresses and CIDR networks "
                    f"(e.g. cams.example.com,10.1.2.0/24,::1); {raw!r} is none of them"
                )
            names.add(_plain(raw))
        return cls(tuple(networks), frozenset(names))

    def allows_name(self, host: str) -> bool:
        """Whether the operator opened this host name."""
        return _plain(host) in self.names

    def allows(self, ip: IPAddress) -> bool:
        """Whether ``ip`` may be reached: opened by the operator, or a public unicast address."""
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is opened with 127.0.0.0/8
        if any(c in n for c in candidates for n in self.networks if c.version == n.version):
            return True
        return not is_refused(ip)

    def check_host(self, host: str) -> IPAddress | None:
        """Refuse a host that names a refused address or a metadata name; its address if it spells one.

        Raises:
            SourceBlockedError: the host is refused.
            InvalidInputError: the host is not a host name or address.
        """
        literal = ip_literal(host)
        if literal is not None:
            if not self.allows(literal):
                raise SourceBlockedError()
            return literal
        if self.allows_name(host):
            return None
        plain = _plain(host)
        if plain in _METADATA_NAMES or plain.endswith(".localhost"):
            raise SourceBlockedError()
        return None

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for ``host``: every one it resolves to, each checked.

        Raises:
            SourceBlockedError: the host, or any address it resolves to, is refused.
            UnreachableError: the name does not resolve.
        """
        literal = self.check_host(host)
        if literal is not None:
            return [literal]
        found = resolve(_plain(host), port, self.resolve_timeout_s)
        if not found:
            raise UnreachableError()
        if not self.allows_name(host) and not all(self.allows(ip) for ip in found):
            raise SourceBlockedError()
        return found


def _plain(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()
