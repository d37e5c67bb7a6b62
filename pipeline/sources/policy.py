"""Which sources a job submitted through the API may read.

``samstream run`` reads whatever its user names; a service reads what *other* people name, on the
cluster's network and disks. The API therefore takes only URLs of allowed schemes (http, https,
rtsp, rtsps by default). Local files and camera devices are refused unless the service was started
with them allowed; FFmpeg's local protocols (``file``, ``concat``, ``subfile``, ``pipe``, …) can
never be allowed by scheme. Once opened, an input is confined to its scheme's FFmpeg protocols
(:data:`pipeline.sources.opening.PROTOCOLS`), so a remote HLS playlist cannot read local files.

A URL's host must be, and resolve only to, public addresses (:mod:`pipeline.sources.addresses`;
``--allow-hosts`` opens others), and tcp/udp URLs must not ask FFmpeg to listen
(:func:`pipeline.sources.guard.check_url_options`). A name that does not resolve is accepted: the
job then fails with "could not connect", as for a host that refuses, so the API does not tell
which names exist inside the network. The source hosts check every connection again
(:mod:`pipeline.sources.guard`): redirects, playlist segments, a name that resolves otherwise later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pipeline.errors import InvalidInputError
from pipeline.sources.addresses import AddressRules, SourceBlockedError, UnreachableError
from pipeline.sources.guard import DEFAULT_PORTS, check_url_options
from pipeline.sources.opening import NETWORK_SCHEMES, redact, scheme_of

# What a service allows unless told: files and URLs over http(s), and RTSP cameras.
DEFAULT_SCHEMES = ("http", "https", "rtsp", "rtsps")


@dataclass(frozen=True)
class SourcePolicy:
    """The sources a service accepts.

    Attributes:
        schemes: URL schemes accepted (a subset of :data:`NETWORK_SCHEMES`).
        allow_local_files: accept paths on the service's machines (files, ``/dev/videoN``).
        addresses: which hosts URLs may name (public addresses, and those ``--allow-hosts`` opens).
    """

    schemes: frozenset[str] = frozenset(DEFAULT_SCHEMES)
    allow_local_files: bool = False
    addresses: AddressRules = field(default_factory=AddressRules)

    @classmethod
    def parse(
        cls, schemes: Iterable[str] | str, allow_local_files: bool = False, allow_hosts: str = ""
    ) -> SourcePolicy:
        """From a comma-separated list (or an iterable) of schemes; refuses schemes it cannot confine.

        ``allow_hosts``: ``--allow-hosts``, host names, addresses and CIDR networks opened.
        """
        items = schemes.split(",") if isinstance(schemes, str) else list(schemes)
        names = frozenset(s.strip().lower().removesuffix("://") for s in items if s.strip())
        unknown = sorted(names - set(NETWORK_SCHEMES))
        if unknown:
            raise InvalidInputError(
                f"cannot allow source schemes {unknown}: allowed schemes are chosen from "
                f"{', '.join(NETWORK_SCHEMES)} (local files: --allow-local-files)"
            )
        return cls(names, allow_local_files, AddressRules.parse(allow_hosts))

    def check(self, source: str) -> str:
        """``source`` if it is allowed; raises InvalidInputError saying why not."""
        if not isinstance(source, str) or not source.strip():
            raise InvalidInputError("source must be a URL")
        if any(ord(c) < 32 for c in source):
            raise InvalidInputError("source must not contain control characters")
        scheme = scheme_of(source)
        allowed = ", ".join(sorted(self.schemes)) or "none"
        if scheme is None or scheme == "file":
            if self.allow_local_files:
                return source
            raise InvalidInputError(
                f"local files are not accepted by this service (source {source!r}); "
                f"give a URL with one of the schemes: {allowed}"
            )
        if scheme not in self.schemes:
            raise InvalidInputError(
                f"source scheme {scheme!r} is not allowed (source {redact(source)}); allowed: {allowed}"
            )
        parts = urlsplit(source)
        if not parts.hostname:
            raise InvalidInputError(f"source URL {redact(source)} has no host")
        check_url_options(source)
        try:
            port = parts.port or DEFAULT_PORTS.get(scheme, 0)
        except ValueError:
            raise InvalidInputError(f"source URL {redact(source)} has no valid port") from None
        try:
            self.addresses.addresses(parts.hostname, port)
        except SourceBlockedError:
            raise InvalidInputError(
                f"source blocked: {redact(source)} is or resolves to an address this service does not "
                "fetch from (loopback, private, link-local, multicast, cloud metadata, …); the "
                "operator can open hosts with --allow-hosts"
            ) from None
        except UnreachableError:
            pass  # the job will say "could not connect", as for any host that cannot be reached
        return source
