"""Every connection FFmpeg makes for a service's job goes where :class:`AddressRules` allows.

Checking the URL a user gave is not enough: an HTTP server can redirect, an HLS playlist names
its segments and keys, and a name can resolve to another address when FFmpeg looks it up again.
So a guarded source (``samstream serve``; ``samstream run`` reads what its own user names and is
not guarded) opens http(s) through a :class:`GuardProxy` of its own: a forward proxy on
127.0.0.1 that FFmpeg is told to use (its ``http_proxy`` option, which its HTTP, TLS and HLS code
pass on to redirects, segments and keys; https goes through ``CONNECT``). The proxy resolves
every target itself, checks every address, and connects to the checked address (no second
lookup for a rebinding DNS to answer); a refused target gets a 403 and marks the source blocked,
and the job fails with :data:`~pipeline.sources.addresses.BLOCKED`, naming no target.

Demuxers that open further URLs without those options (``concat``, ``dash``, ``sdp``, image
sequences, …) are kept out by FFmpeg's ``format_whitelist``. RTSP, RTSPS and TCP feeds are
resolved and checked before opening. TCP is then opened by the checked address, and RTSP through
an :class:`RtspRelay` to it that ends the connection at a redirect (FFmpeg would follow one on a
connection of its own). RTSP is held to interleaved TCP: no ``?udp``/``?http`` in the URL, no
http or udp among its protocols. A failed connection is reported as
:data:`~pipeline.sources.addresses.UNREACHABLE` whatever the cause (refused, timed out, no such
host): the reason would tell a caller which ports and names exist inside the network.

Not covered: RTSPS is encrypted end to end, so its redirects cannot be read on the way; an RTSPS
server can redirect FFmpeg to an address the guard would refuse (and FFmpeg looks its name up
again). Leave ``rtsps`` out of ``--allow-schemes`` where that matters.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import selectors
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from pipeline.errors import InvalidInputError, SourceError
from pipeline.sources.addresses import (
    BLOCKED,
    UNREACHABLE,
    AddressRules,
    IPAddress,
    SourceBlockedError,
    UnreachableError,
)
from pipeline.sources.opening import scheme_of

log = logging.getLogger(__name__)

# Demuxers a guarded network source may use: containers that open no further URLs (or, HLS, that
# pass the proxy on), and the audio formats of HLS renditions.
FORMATS = (
    "hls,mpegts,mpegtsraw,mov,mp4,matroska,webm,flv,live_flv,avi,asf,mjpeg,mpjpeg,h264,hevc,vvc,"
    "m4v,mpegvideo,mpeg,ivf,ogg,nut,mxf,av1,obu,yuv4mpegpipe,gif,aac,mp3,ac3,eac3,flac,wav,rtsp"
)
# Guarded protocols: RTSP without http(s) (tunnelling) or udp (the server names where RTP goes).
GUARDED_PROTOCOLS = {
    "http": "http,https,tls,tcp,crypto,httpproxy",
    "https": "http,https,tls,tcp,crypto,httpproxy",
    "rtsp": "rtsp,rtsps,rtp,srtp,tcp,tls",
    "rtsps": "rtsp,rtsps,rtp,srtp,tcp,tls",
    "udp": "udp,rtp",
    "tcp": "tcp",
}
DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}
# URL options that make FFmpeg listen, bind a chosen local address, or pick its own transport.
_LISTENER_OPTIONS = {
    "tcp": ("listen", "listen_timeout", "local_addr", "local_port"),
    "udp": ("localaddr", "localport", "listen", "reuse", "reuse_socket"),
}
_RTSP_TRANSPORTS = ("udp", "multicast", "http", "https", "listen")
_HEAD_LIMIT = 64 * 1024


def check_url_options(uri: str) -> None:
    """Refuse URL options that make FFmpeg listen or leave the checked path.

    tcp: ``listen`` (any value, ``?listen`` alone too), ``listen_timeout``, ``local_addr``,
    ``local_port``. udp: ``localaddr``, ``localport``, ``reuse``; a udp URL must name its host
    (``udp://@:5000`` binds every address). rtsp(s): ``?udp``, ``?multicast``, ``?http``,
    ``?https`` (FFmpeg's transport choices in the URL).

    Raises:
        InvalidInputError: such an option is present.
    """
    scheme = scheme_of(uri) or ""
    parts = urlsplit(uri)
    keys = {
        item.split("=", 1)[0].strip().lower()
        for chunk in (parts.query, parts.fragment)
        for item in chunk.replace("?", "&").split("&")
        if item
    }
    named = _RTSP_TRANSPORTS if scheme in ("rtsp", "rtsps") else _LISTENER_OPTIONS.get(scheme, ())
    refused = sorted(keys & set(named))
    if refused:
        raise InvalidInputError(
            f"source URL option(s) {refused} are not accepted by this service: it reads from a "
            "sender, it does not listen or choose its own transport"
        )
    if scheme == "udp" and not parts.hostname:
        raise InvalidInputError("a udp:// source must name the sender's or group's address (udp://HOST:PORT)")


@dataclass(frozen=True)
class NetworkGuard:
    """The rule a service's source hosts apply to every connection their sources make.

    Travels from ``samstream serve`` to each source host (it pickles); each guarded source makes
    a :class:`GuardSession` of its own.

    Attributes:
        rules: which addresses may be reached.
    """

    rules: AddressRules = field(default_factory=AddressRules)

    def session(self, connect_timeout_s: float, answer_timeout_s: float) -> GuardSession:
        """A source's guard: its proxy and what it saw."""
        return GuardSession(self.rules, connect_timeout_s, answer_timeout_s)


class GuardSession:
    """One source's guard: opens its URL the guarded way and words its failures.

    Args:
        rules: which addresses may be reached.
        connect_timeout_s: most time to connect to a target.
        answer_timeout_s: most time to wait for a request's or a response's head.
    """

    def __init__(self, rules: AddressRules, connect_timeout_s: float, answer_timeout_s: float) -> None:
        self.rules = rules
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self._proxy: GuardProxy | None = None
        self._relays: list[RtspRelay] = []  # one per RTSP connection made (reconnects make more)
        self._blocked = False
        self._unreachable = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def blocked(self) -> bool:
        """Whether anything this source tried to reach was refused (sticky)."""
        return (
            self._blocked
            or (self._proxy is not None and self._proxy.blocked)
            or any(r.blocked for r in self._relays)
        )

    def prepare(self, uri: str) -> tuple[str, dict[str, str]]:
        """The URL to give FFmpeg and the options that guard it.

        Raises:
            SourceBlockedError: the host is refused.
            UnreachableError: the host does not resolve.
            InvalidInputError: the URL has options that are refused.
        """
        check_url_options(uri)
        scheme = scheme_of(uri) or ""
        if scheme not in GUARDED_PROTOCOLS:
            raise InvalidInputError(f"a guarded source cannot read {scheme or 'local'} inputs")
        options = {"protocol_whitelist": GUARDED_PROTOCOLS[scheme], "format_whitelist": FORMATS}
        self._unreachable = False
        if scheme in ("http", "https"):
            _unset_no_proxy()
            options["http_proxy"] = self._start_proxy().url
            return uri, options
        parts = urlsplit(uri)
        host = parts.hostname or ""
        try:
            addresses = self.rules.addresses(host, parts.port or DEFAULT_PORTS.get(scheme, 0))
        except SourceBlockedError:
            self._blocked = True
            raise
        except UnreachableError:
            self._unreachable = True
            raise
        if scheme == "tcp":  # by the checked address: FFmpeg does not look the name up again
            uri = _with_host(parts, addresses[0])
        elif scheme == "rtsp":  # through a relay to the checked address, which refuses redirects
            port = parts.port or DEFAULT_PORTS[scheme]
            relay = RtspRelay(addresses, port, self.connect_timeout_s, self.answer_timeout_s)
            with self._lock:
                if self._closed:
                    relay.close()
                    raise SourceError("the source is closed")
                done = [r for r in self._relays if r.idle()]  # earlier connections, ended
                self._blocked = self._blocked or any(r.blocked for r in done)
                self._relays = [r for r in self._relays if r not in done] + [relay]
            for old in done:
                old.close()
            uri = _with_host(parts, ipaddress.ip_address("127.0.0.1"), relay.port)
        if scheme in ("rtsp", "rtsps"):  # interleaved: no connection but the checked one
            options["rtsp_transport"] = "tcp"
        return uri, options

    def reason(self, exc: BaseException, fallback: str) -> str:
        """What to report for FFmpeg's error ``exc`` (``fallback``: the unguarded wording)."""
        import av

        if self.blocked or isinstance(exc, SourceBlockedError):
            return BLOCKED
        if (
            self._unreachable
            or (self._proxy is not None and self._proxy.unreachable)
            or any(r.unreachable for r in self._relays)
            or _connection_error(exc)
        ):
            return UNREACHABLE
        if isinstance(exc, av.FFmpegError) and exc.errno == errno.EINVAL:  # not in FORMATS
            return "not a video format this service reads from the network"
        return fallback

    def _start_proxy(self) -> GuardProxy:
        with self._lock:
            if self._closed:
                raise SourceError("the source is closed")
            if self._proxy is None:
                self._proxy = GuardProxy(self.rules, self.connect_timeout_s, self.answer_timeout_s)
            self._proxy.unreachable = False
            return self._proxy

    def close(self) -> None:
        """Stop the proxy and every connection it relays. Idempotent."""
        with self._lock:
            self._blocked = self.blocked
            self._closed = True
            proxy, self._proxy = self._proxy, None
            relays, self._relays = self._relays, []
        for listener in [*([proxy] if proxy is not None else []), *relays]:
            listener.close()


def _connection_error(exc: BaseException) -> bool:
    """Whether FFmpeg's error is about reaching the host (refused, timed out, unresolvable, …)."""
    import av

    if isinstance(
        exc,
        (
            av.error.ConnectionRefusedError,
            av.error.ConnectionResetError,
            av.error.ConnectionAbortedError,
            av.error.TimeoutError,
            av.error.ExitError,
            UnreachableError,
        ),
    ):
        return True
    return isinstance(exc, av.error.OSError) and exc.errno in (
        errno.EIO,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EADDRNOTAVAIL,
    )


def _with_host(parts: SplitResult, ip: IPAddress, port: int | None = None) -> str:
    """The URL with ``ip`` (and ``port``, if given) for its host (and port)."""
    literal = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    userinfo = parts.netloc.rpartition("@")[0]
    port = port or parts.port
    netloc = (userinfo + "@" if userinfo else "") + literal + (f":{port}" if port else "")
    return parts._replace(netloc=netloc).geturl()


def _unset_no_proxy() -> None:
    """FFmpeg skips ``http_proxy`` for hosts in ``$no_proxy``: take it from FFmpeg, leave it to gRPC.

    gRPC (Ray) reads ``$no_grpc_proxy`` before ``$no_proxy``, so it keeps seeing the same list.
    """
    value = os.environ.pop("no_proxy", None)
    if value is not None:
        os.environ.setdefault("no_grpc_proxy", value)


class _Listener:
    """A listening socket on 127.0.0.1 whose every connection a thread of its own serves."""

    def __init__(self, connect_timeout_s: float, answer_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.blocked = False
        self.unreachable = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        name = f"{type(self).__name__} :{self.port}"
        threading.Thread(target=self._accept, name=name, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            if not self._track(client):
                client.close()
                return
            threading.Thread(
                target=self._run, args=(client,), name=f"{type(self).__name__} relay", daemon=True
            ).start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(sock)
            return True

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def idle(self) -> bool:
        """Whether no connection is open now."""
        with self._lock:
            return not self._open

    def _run(self, client: socket.socket) -> None:
        upstream: list[socket.socket] = []
        try:
            self._serve(client, upstream)
        finally:
            for sock in (client, *upstream):
                self._untrack(sock)

    def _serve(self, client: socket.socket, upstream: list[socket.socket]) -> None:
        raise NotImplementedError

    def _connect(self, addresses: list[IPAddress], port: int) -> socket.socket | None:
        """A connection to the first of the (checked) addresses that answers, or None."""
        for ip in addresses:
            family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            if not self._track(sock):
                sock.close()
                return None
            sock.settimeout(self.connect_timeout_s)
            try:
                sock.connect((str(ip), port))
            except OSError:
                self._untrack(sock)
                continue
            sock.settimeout(self.answer_timeout_s)
            return sock
        return None

    def close(self) -> None:
        """Stop listening and end every relayed connection. Idempotent."""
        with self._lock:
            self._closed = True
            socks, self._open = list(self._open), set()
        for sock in [self._listener, *socks]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class GuardProxy(_Listener):
    """An HTTP forward proxy on 127.0.0.1 that reaches only addresses ``rules`` allows.

    Plain http requests (absolute-form) are sent on with ``Connection: close``; ``CONNECT`` (https)
    is tunnelled. A refused target gets ``403`` and sets :attr:`blocked`; one that cannot be
    resolved or connected to, or that sends no response head within ``answer_timeout_s``, gets
    ``502`` and sets :attr:`unreachable`. Each connection is then relayed by a thread of its own
    until either side closes (FFmpeg's own read timeout ends a stalled one) or the proxy is
    closed; a reader that pauses (its buffer full) only pauses the relay.
    """

    def __init__(self, rules: AddressRules, connect_timeout_s: float, answer_timeout_s: float) -> None:
        super().__init__(connect_timeout_s, answer_timeout_s)
        self.rules = rules
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self, client: socket.socket, opened: list[socket.socket]) -> None:
        try:
            client.settimeout(self.answer_timeout_s)
            head, rest = _read_head(client)
            if head is None:
                return
            method, target, version, headers = _parse_request(head)
            host, port, origin = _target(method, target)
            try:
                addresses = self.rules.addresses(host, port)
            except SourceBlockedError:
                self.blocked = True
                log.info("guard proxy: refused a connection to %s:%s (a refused address)", host, port)
                client.sendall(_answer(403, "Forbidden"))
                return
            except (UnreachableError, InvalidInputError):
                self.unreachable = True
                client.sendall(_answer(502, "Bad Gateway"))
                return
            upstream = self._connect(addresses, port)
            if upstream is None:
                self.unreachable = True
                client.sendall(_answer(502, "Bad Gateway"))
                return
            opened.append(upstream)
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                try:
                    upstream.sendall(_request_head(method, origin, version, headers) + rest)
                    response, body = _read_head(upstream)
                except (OSError, ValueError):
                    response = None
                if response is None:  # silent, or gone: to the job, as if it never answered
                    self.unreachable = True
                    client.sendall(_answer(502, "Bad Gateway"))
                    return
                client.sendall(_close_response(response) + body)
            client.settimeout(None)  # FFmpeg may pause reading for as long as its pipeline waits
            upstream.settimeout(None)
            _relay(client, upstream)
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                client.sendall(_answer(400, "Bad Request"))


class RtspRelay(_Listener):
    """A relay on 127.0.0.1 to one checked RTSP server, that ends the connection at a redirect.

    FFmpeg follows an RTSP ``3xx`` answer to wherever its ``Location`` points, on a connection
    of its own; the relay reads the server's messages (RTSP answers, and ``$``-framed interleaved
    packets), and a redirect closes the connection and sets :attr:`blocked` instead.

    Args:
        addresses: the server's checked addresses.
        port: its port.
    """

    def __init__(
        self, addresses: list[IPAddress], port: int, connect_timeout_s: float, answer_timeout_s: float
    ) -> None:
        super().__init__(connect_timeout_s, answer_timeout_s)
        self.addresses = addresses
        self.target_port = port

    def _serve(self, client: socket.socket, opened: list[socket.socket]) -> None:
        upstream = self._connect(self.addresses, self.target_port)
        if upstream is None:
            self.unreachable = True
            return
        opened.append(upstream)
        upstream.settimeout(None)
        pending = b""
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            while True:
                for key, _ in sel.select():
                    try:
                        chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        return
                    if not chunk:
                        return
                    if key.fileobj is client:
                        upstream.sendall(chunk)
                        continue
                    try:
                        whole, pending = _rtsp_units(pending + chunk)
                    except _Redirect:
                        self.blocked = True
                        log.info("rtsp relay: refused a redirect from the server")
                        return
                    except ValueError:
                        return
                    if whole:
                        client.sendall(whole)


class _Redirect(Exception):
    """The RTSP server answered 3xx."""


_RTSP_REDIRECT = re.compile(rb"^RTSP/\d\.\d\s+3\d\d")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length\s*:\s*(\d+)", re.IGNORECASE)


def _rtsp_units(data: bytes) -> tuple[bytes, bytes]:
    """(the whole messages and interleaved packets at the start of ``data``, the rest).

    Raises:
        _Redirect: a message is a 3xx answer.
        ValueError: a message head too long to be one.
    """
    at = 0
    while at < len(data):
        if data[at : at + 1] == b"$":  # $, channel, 16-bit length, payload
            if len(data) - at < 4:
                break
            end = at + 4 + int.from_bytes(data[at + 2 : at + 4], "big")
        else:
            blank = data.find(b"\r\n\r\n", at)
            if blank < 0:
                if len(data) - at > _HEAD_LIMIT:
                    raise ValueError("RTSP head too long")
                break
            head = data[at : blank + 4]
            if _RTSP_REDIRECT.match(head):
                raise _Redirect()
            length = _CONTENT_LENGTH.search(head)
            end = blank + 4 + (int(length.group(1)) if length else 0)
        if end > len(data):
            break
        at = end
    return data[:at], data[at:]


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """An HTTP message head (through the blank line) and the bytes read after it; None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise ValueError("HTTP head too long")
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _parse_request(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return method.upper(), target, version, headers


def _target(method: str, target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a proxy request; raises ValueError for anything else."""
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return host.strip("[]"), int(port), ""
    parts = urlsplit(target)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ValueError(f"not an absolute http URL: {target!r}")
    origin = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, origin


_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}


def _request_head(method: str, origin: str, version: str, headers: list[tuple[str, str]]) -> bytes:
    kept = [f"{n}: {v}" for n, v in headers if n.lower() not in _HOP_HEADERS]
    return "\r\n".join([f"{method} {origin} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")


def _close_response(head: bytes) -> bytes:
    """The response head with ``Connection: close`` (the proxy reaches one target per connection)."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0], *(x for x in lines[1:] if x and x.split(":", 1)[0].strip().lower() not in _HOP_HEADERS)]
    return "\r\n".join([*kept, "Connection: close", "", ""]).encode("latin-1")


def _answer(status: int, text: str) -> bytes:
    return f"HTTP/1.1 {status} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or the proxy shuts both down)."""
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        while True:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                chunk = src.recv(65536)
                if not chunk:
                    return
                key.data.sendall(chunk)
