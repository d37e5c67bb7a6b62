"""The address rule of a service's sources: every spelling of a refused address is refused."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.errors import InvalidInputError
from pipeline.sources.addresses import (
    AddressRules,
    SourceBlockedError,
    UnreachableError,
    ip_literal,
    is_refused,
)

# Each spelling of a refused address, as a URL's host gives it.
REFUSED_HOSTS = [
    "127.0.0.1",
    "127.0.0.2",
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0x7f.0.0.1",
    "127.1",  # short
    "0177.0.0.1",  # octal
    "017700000001",
    "127.0.0.1.",  # trailing dot
    "0",
    "0.0.0.0",
    "10.0.0.2",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "169.254.169.254",  # cloud metadata
    "169.254.1.1",
    "168.63.129.16",  # Azure's wire server (a public address)
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",  # reserved
    "192.0.2.1",  # documentation
    "[::1]",
    "[::]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[fc00::1]",  # unique-local
    "[fe80::1]",  # link-local
    "[fe80::1%25eth0]",
    "[ff02::1]",  # multicast
    "[2001:db8::1]",  # documentation
    "[fec0::1]",  # site-local
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_every_spelling_of_a_refused_address_is_refused(host: str) -> None:
    rules = AddressRules()
    with pytest.raises(SourceBlockedError, match="blocked"):
        rules.check_host(host.strip("[]"))
    with pytest.raises(SourceBlockedError):
        rules.addresses(host.strip("[]"), 80)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("8.8.8.8", "8.8.8.8"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("example.com", None),
        ("cams.example.", None),
    ],
)
def test_ip_literal_reads_what_the_resolver_reads(host: str, address: str | None) -> None:
    assert ip_literal(host) == (ipaddress.ip_address(address) if address else None)


@pytest.mark.parametrize("host", ["a b", "h\\x", "h%2e", "h@x", "[zz::1]"])
def test_hosts_with_characters_no_host_has_are_invalid(host: str) -> None:
    with pytest.raises(InvalidInputError, match="source host"):
        ip_literal(host)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_are_reached(address: str) -> None:
    assert not is_refused(ipaddress.ip_address(address))
    assert AddressRules().addresses(address, 80) == [ipaddress.ip_address(address)]


@pytest.mark.parametrize(
    "name", ["localhost", "LOCALHOST.", "metadata.google.internal", "metadata.goog", "cam.localhost"]
)
def test_metadata_and_loopback_names_are_refused_without_a_lookup(name: str) -> None:
    with pytest.raises(SourceBlockedError):
        AddressRules().check_host(name)


def test_a_name_is_checked_by_every_address_it_resolves_to() -> None:
    """``localhost`` resolves to loopback: refused even when its name is not on the list of names."""
    rules = AddressRules(names=frozenset({"unrelated"}))
    with pytest.raises(SourceBlockedError):
        rules.addresses("localhost", 80)


def test_a_name_that_does_not_resolve_is_unreachable_not_blocked() -> None:
    with pytest.raises(UnreachableError, match="could not connect to the source"):
        AddressRules().addresses("no-such-host.invalid", 80)


def test_allow_hosts_opens_named_hosts_addresses_and_networks() -> None:
    rules = AddressRules.parse("127.0.0.0/8, ::1,cams.lan , 10.1.2.3")
    assert rules.names == {"cams.lan"}
    assert rules.addresses("127.0.0.5", 80) == [ipaddress.ip_address("127.0.0.5")]
    assert rules.addresses("0x7f000001", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert rules.addresses("::1", 80) == [ipaddress.ip_address("::1")]
    assert rules.addresses("::ffff:127.0.0.1", 80)  # the mapped form of an opened address
    assert rules.addresses("10.1.2.3", 80)
    assert rules.check_host("cams.lan.") is None
    for refused in ("10.1.2.4", "169.254.169.254", "[::2]", "192.168.0.1"):
        with pytest.raises(SourceBlockedError):
            rules.addresses(refused.strip("[]"), 80)


def test_allow_hosts_by_name_opens_what_the_name_resolves_to() -> None:
    assert AddressRules.parse("localhost").addresses("localhost", 80)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "http://h", "a b", "h/x", "1:2:3"])
def test_allow_hosts_refuses_what_is_no_host_address_or_network(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="--allow-hosts takes"):
        AddressRules.parse(bad)
