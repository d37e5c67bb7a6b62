"""What every source needs to open an input with PyAV: URL schemes, names safe to print, one-line
reasons for FFmpeg's errors, and the choice of the video stream.
"""

from __future__ import annotations

import errno
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def scheme_of(uri: str) -> str | None:
    """The URL scheme in lower case (``file`` for ``file:…``), or None for a plain path."""
    match = _SCHEME.match(uri)
    if match:
        return match.group(1).lower()
    return "file" if uri.lower().startswith("file:") else None


# The schemes samstream reads, written once. A job (a file, whole) reads a path or an http(s) URL;
# a live stream reads a feed: any of LIVE_SCHEMES (http(s): MJPEG, HLS, MPEG-TS over HTTP) or a
# camera device. The first four of those are feeds whatever is asked: nothing there has an end.
URL_SCHEMES = ("http", "https")
FEED_SCHEMES = ("rtsp", "rtsps", "udp", "tcp")
LIVE_SCHEMES = (*FEED_SCHEMES, *URL_SCHEMES)
NETWORK_SCHEMES = (*URL_SCHEMES, *FEED_SCHEMES)  # every scheme a service may allow


def is_feed(source: str) -> bool:
    """Whether ``source`` can only be read live: an rtsp(s)://, udp:// or tcp:// URL, or a camera
    (/dev/videoN); an http(s) URL is live only when asked."""
    return scheme_of(source) in FEED_SCHEMES or source.startswith("/dev/video")


def kind_error(source: str, live: bool) -> str | None:
    """Why ``source`` cannot be read as a job (``live`` False) or a live stream (True); None if it can.
    Paths and file: URLs are left to the source policy."""
    scheme = scheme_of(source)
    if scheme is None or scheme == "file":
        return None
    if not live and scheme not in URL_SCHEMES:
        return f"a job reads files and http(s) URLs; a {scheme}:// feed is a live stream: POST it to /streams"
    if live and scheme not in LIVE_SCHEMES:
        return f"a live stream cannot read {scheme}:// sources"
    return None


_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def redact(uri: str) -> str:
    """The URL for messages: credentials, query and fragment (signed URLs carry secrets there) hidden.

    ``rtsp://admin:pw@cam/live?token=x#t`` becomes ``rtsp://admin:***@cam/live?…``; a user name
    alone (``https://TOKEN@host/``, how many services take a token) becomes ``***@``.
    """
    match = _AUTHORITY.match(uri)
    if match is None:  # a path: nothing secret in it ('?' and '#' are part of the file's name)
        return uri
    if "@" in match.group(2):
        userinfo, host = match.group(2).rsplit("@", 1)  # a password may hold an unescaped '@'
        user, has_password, _ = userinfo.partition(":")
        shown = f"{user}:***" if has_password else "***"
        uri = f"{match.group(1)}{shown}@{host}{uri[match.end() :]}"
    return re.sub(r"([?#]).*$", r"\1…", uri, flags=re.DOTALL)


def redact_text(text: str, source: str | None = None) -> str:
    """``text`` (an error, an event's detail) with every URL in it redacted, and the secrets of
    ``source`` hidden wherever they appear, also outside a URL (FFmpeg may quote a part of it)."""
    if source:
        text = text.replace(source, redact(source))
        parts = urlsplit(source) if _AUTHORITY.match(source) else None
        secrets = [] if parts is None else [parts.password, parts.query, parts.fragment]
        if parts is not None and parts.password is None:
            secrets.append(parts.username)  # a user name alone is a token
        if parts is not None:
            secrets += [value for _, value in parse_qsl(parts.query)]  # quoted one by one
        for secret in filter(None, secrets):
            for form in {secret, unquote(secret)}:
                if len(form) >= 3:  # shorter ones would garble the text and hide next to nothing
                    text = text.replace(form, "***")
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    bare = url.rstrip(".,:;!")  # the sentence's punctuation after a URL stays
    return redact(bare) + url[len(bare) :]


def scrubbed(exc: BaseException) -> BaseException:
    """PyAV's error with the URL it names redacted, to chain to our own (tracebacks get logged).

    FFmpeg errors carry the URL as given, password included; this returns a copy of the same
    type with :func:`redact` applied (or ``exc`` itself when there is nothing to hide).
    """
    import av

    filename = exc.filename if isinstance(exc, av.FFmpegError) else None
    if not isinstance(filename, str) or redact(filename) == filename:
        return exc
    try:
        clean = type(exc)(exc.errno, exc.strerror, redact(filename))  # type: ignore[attr-defined]
    except Exception:  # an error type with another constructor: hide it all
        return RuntimeError(f"{type(exc).__name__} (details hidden: they name a secret URL)")
    return clean.with_traceback(exc.__traceback__)


def error_reason(exc: BaseException, timeouts: tuple[float, float] | None) -> str:
    """One short phrase for a PyAV/FFmpeg error.

    Args:
        exc: the error PyAV raised.
        timeouts: (open, read) seconds the input was opened with, None for a local file.
    """
    import av

    if isinstance(exc, av.error.ExitError) and timeouts is not None:
        return f"timed out (no answer within {timeouts[0]:g} s to open, {timeouts[1]:g} s per read)"
    if isinstance(exc, av.error.FileNotFoundError):
        return "no such file"
    if isinstance(exc, av.error.PermissionError):
        return "permission denied"
    if isinstance(exc, av.error.IsADirectoryError):
        return "is a directory, not a video file"
    if isinstance(exc, av.error.ConnectionRefusedError):
        return "connection refused (is the server running, and the port right?)"
    if isinstance(exc, av.error.TimeoutError):
        return "timed out connecting"
    if isinstance(exc, av.error.OSError) and exc.errno == errno.EIO and timeouts is not None:
        return "input/output error (host name not found, or network unreachable?)"
    text = exc.strerror if isinstance(exc, av.FFmpegError) and exc.strerror else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def video_stream(container: InputContainer) -> VideoStream | None:
    """The first video stream that is a real video (not an attached cover picture)."""
    from av.stream import Disposition

    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    return None


def stream_kinds(container: InputContainer) -> str:
    """The kinds of the container's streams, for a message: ``audio, data`` (``none`` if empty)."""
    return ", ".join(s.type for s in container.streams) or "none"


# FFmpeg protocols an input may use, by the scheme it was given with. An input is opened with its
# ``protocol_whitelist``, which FFmpeg also applies to everything the input opens in turn (HLS
# segments and keys, DASH fragments, RTP sessions): a remote playlist cannot make FFmpeg read a
# local file (``file:``, ``concat:``, ``subfile:``), and a local file cannot reach the network.
PROTOCOLS: dict[str, str] = {
    "file": "file",
    "http": "http,https,tls,tcp,crypto,httpproxy",
    "https": "http,https,tls,tcp,crypto,httpproxy",
    "rtsp": "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https",
    "rtsps": "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https",
    "udp": "udp,rtp",
    "tcp": "tcp",
}


def protocol_options(scheme: str | None) -> dict[str, str]:
    """The FFmpeg ``protocol_whitelist`` option for an input given with ``scheme`` (None: a path)."""
    name = scheme or "file"
    return {"protocol_whitelist": PROTOCOLS[name]} if name in PROTOCOLS else {}
