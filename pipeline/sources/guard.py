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
sequences, …) are kept out by FFmpeg's ``format_whitelist``. RTSP and TCP feeds are resolved and
checked before opening and then opened by the checked address; RTSP is held to interleaved TCP
(no ``?udp``/``?http`` tunnelling, no http in its protocols). A failed connection is reported as
:data:`~pipeline.sources.addresses.UNREACHABLE` whatever the cause (refused, timed out, no such
host): the reason would tell a caller which ports and names exist inside the network.

Not covered: an RTSP server's redirect (3xx) is followed by FFmpeg on a connection of its own,
which this guard does not see.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
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
        self._blocked = False
        self._unreachable = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def blocked(self) -> bool:
        """Whether anything this source tried to reach was refused (sticky)."""
        return self._blocked or (self._proxy is not None and self._proxy.blocked)

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
        if scheme in ("rtsp", "tcp"):  # by the checked address: FFmpeg does not look the name up again
            uri = _with_host(parts, addresses[0])
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
            self._closed = True
            proxy, self._proxy = self._proxy, None
            if proxy is not None:
                self._blocked = self._blocked or proxy.blocked
        if proxy is not None:
            proxy.close()


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


def _with_host(parts: SplitResult, ip: IPAddress) -> str:
    literal = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + literal + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _unset_no_proxy() -> None:
    """FFmpeg skips ``http_proxy`` for hosts in ``$no_proxy``: take it from FFmpeg, leave it to gRPC.

    gRPC (Ray) reads ``$no_grpc_proxy`` before ``$no_proxy``, so it keeps seeing the same list.
    """
    value = os.environ.pop("no_proxy", None)
    if value is not None:
        os.environ.setdefault("no_grpc_proxy", value)


class GuardProxy:
    """An HTTP forward proxy on 127.0.0.1 that reaches only addresses ``rules`` allows.

    Plain http requests (absolute-form) are sent on with ``Connection: close``; ``CONNECT`` (https)
    is tunnelled. A refused target gets ``403`` and sets :attr:`blocked`; one that cannot be
    resolved or connected to, or that sends no response head within ``answer_timeout_s``, gets
    ``502`` and sets :attr:`unreachable`. Each connection is then relayed by a thread of its own
    until either side closes (FFmpeg's own read timeout ends a stalled one) or the proxy is
    closed; a reader that pauses (its buffer full) only pauses the relay.
    """

    def __init__(self, rules: AddressRules, connect_timeout_s: float, answer_timeout_s: float) -> None:
        self.rules = rules
        self.connect_timeout_s = connect_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.blocked = False
        self.unreachable = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"guard proxy {self.url}", daemon=True).start()

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
                target=self._serve, args=(client,), name="guard proxy relay", daemon=True
            ).start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(sock)
            return True

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
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
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    with contextlib.suppress(OSError):
                        sock.close()

    def _connect(self, addresses: list[IPAddress], port: int) -> socket.socket | None:
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
                with self._lock:
                    self._open.discard(sock)
                sock.close()
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
