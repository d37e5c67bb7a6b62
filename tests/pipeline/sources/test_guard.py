"""Every connection FFmpeg makes for a guarded source is checked: real loopback servers.

The guard is allowed 127.0.0.1 only; 127.0.0.2 and ::1 are loopback too, and refused, so a
server there stands for any address inside the service's network. Each test checks that the
refused server received nothing at all.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.bench.samples import write_clip
from pipeline.errors import InvalidInputError, SourceError
from pipeline.sources.addresses import BLOCKED, UNREACHABLE, AddressRules
from pipeline.sources.guard import NetworkGuard, check_url_options
from pipeline.sources.live import LiveSource
from pipeline.sources.video import VideoSource
from tests.fixtures.http import serve_directory
from tests.fixtures.streams import RtspServer, StreamSender, free_port, rtsp_server_available

pytestmark = pytest.mark.integration

GUARD = NetworkGuard(AddressRules.parse("127.0.0.1"))
PLAYLIST = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n{key}#EXTINF:1.0,\n{segment}\n#EXT-X-ENDLIST\n"
FAST = {"open_timeout_s": 3, "read_timeout_s": 3}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guard-media")
    write_clip(root / "clip.mp4", frames=10, width=64, height=48)
    write_clip(root / "segment.ts", frames=10, width=64, height=48)
    (root / "key.bin").write_bytes(bytes(16))
    return root


@pytest.fixture(params=["127.0.0.2", "::1"])
def refused(request: pytest.FixtureRequest, media: Path) -> Iterator[tuple[str, list[str]]]:
    """A server on a refused loopback address: its base URL and the paths it was asked for."""
    seen: list[str] = []
    with serve_directory(media, request.param, seen=seen) as base:
        yield base, seen


def _frames(uri: str, guard: NetworkGuard | None = GUARD) -> int:
    with VideoSource(uri, guard=guard, **FAST) as video:
        return sum(1 for _ in video.frames(image_size=None))


def _error(uri: str) -> str:
    with pytest.raises(SourceError) as err:
        _frames(uri)
    return str(err.value)


def test_an_allowed_server_plays_through_the_guard(media: Path) -> None:
    (media / "ok.m3u8").write_text(PLAYLIST.format(key="", segment="segment.ts"))
    with serve_directory(media) as base:
        assert _frames(f"{base}/clip.mp4") == 10
        assert _frames(f"{base}/ok.m3u8") == 10


def test_a_redirect_to_a_refused_address_is_blocked(media: Path, refused: tuple[str, list[str]]) -> None:
    target, seen = refused
    with serve_directory(media, redirects={"/r.mp4": f"{target}/clip.mp4"}) as base:
        assert _frames(f"{base}/r.mp4", guard=None) == 10  # unguarded (``run``), the redirect is followed
        assert seen == ["/clip.mp4"]
        seen.clear()
        message = _error(f"{base}/r.mp4")
    assert message == f"cannot open video {base}/r.mp4: {BLOCKED}"
    assert seen == []
    assert target.split("//")[1] not in message  # the target is not named


def test_a_playlist_whose_segment_is_on_a_refused_address_is_blocked(
    media: Path, refused: tuple[str, list[str]]
) -> None:
    target, seen = refused
    (media / "far.m3u8").write_text(PLAYLIST.format(key="", segment=f"{target}/segment.ts"))
    with serve_directory(media) as base:
        message = _error(f"{base}/far.m3u8")
    assert message.endswith(BLOCKED)
    assert seen == []


def test_a_playlist_whose_key_is_on_a_refused_address_is_blocked(
    media: Path, refused: tuple[str, list[str]]
) -> None:
    target, seen = refused
    key = f'#EXT-X-KEY:METHOD=AES-128,URI="{target}/key.bin"\n'
    (media / "key.m3u8").write_text(PLAYLIST.format(key=key, segment="segment.ts"))
    with serve_directory(media) as base:
        message = _error(f"{base}/key.m3u8")
    assert message.endswith(BLOCKED)
    assert seen == []


def test_a_segment_blocked_after_good_ones_fails_the_video(
    media: Path, refused: tuple[str, list[str]]
) -> None:
    """FFmpeg skips a segment it cannot open; the guard does not let that pass for the end."""
    target, seen = refused
    lines = "".join(f"#EXTINF:1.0,\n{s}\n" for s in ("segment.ts", "segment.ts", f"{target}/segment.ts"))
    (media / "late.m3u8").write_text(PLAYLIST.format(key="", segment="").replace("#EXTINF:1.0,\n\n", lines))
    with serve_directory(media) as base, pytest.raises(SourceError, match="blocked"):
        _frames(f"{base}/late.m3u8")
    assert seen == []


def test_refused_closed_silent_and_unknown_hosts_read_the_same(media: Path) -> None:
    """No caller can tell a closed port from a silent one, or from a name that does not exist."""
    closed = free_port()
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        urls = [
            f"http://127.0.0.1:{closed}/clip.mp4",
            f"http://127.0.0.1:{silent.getsockname()[1]}/clip.mp4",
            "http://no-such-host.invalid/clip.mp4",
        ]
        for url in urls:
            assert _error(url) == f"cannot open video {url}: {UNREACHABLE}"
    finally:
        silent.close()


def test_demuxers_that_open_urls_of_their_own_are_not_used(
    media: Path, refused: tuple[str, list[str]]
) -> None:
    """``concat`` (as ``dash``, ``sdp``, image sequences) opens URLs without the proxy: not read."""
    target, seen = refused
    (media / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{target}/clip.mp4'\n")
    with serve_directory(media) as base, pytest.raises(SourceError, match="not a video format"):
        _frames(f"{base}/list.ffconcat")
    assert seen == []


@pytest.mark.parametrize("protocol", ["http", "tcp", "udp"])
def test_live_feeds_play_through_the_guard(protocol: str) -> None:
    with StreamSender(protocol) as sender:
        live = LiveSource(sender.url, image_size=None, open_timeout_s=5, guard=GUARD)
        with live:
            assert live.latest(timeout_s=5) is not None


def test_a_live_feed_on_a_refused_address_is_blocked_before_connecting() -> None:
    listener = socket.create_server(("127.0.0.2", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for url in (f"rtsp://127.0.0.2:{port}/s", f"tcp://127.0.0.2:{port}", f"http://127.0.0.2:{port}/s"):
            with pytest.raises(SourceError, match="blocked"):
                LiveSource(url, open_timeout_s=2, guard=GUARD)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
    finally:
        listener.close()


def test_a_live_feed_that_cannot_connect_says_only_that() -> None:
    port = free_port()
    for url in (f"tcp://127.0.0.1:{port}", f"rtsp://127.0.0.1:{port}/s", "rtsp://no-such-host.invalid/s"):
        with pytest.raises(SourceError) as err:
            LiveSource(url, open_timeout_s=2, guard=GUARD)
        assert str(err.value) == f"cannot open live source {url}: {UNREACHABLE}"


@pytest.mark.skipif(not rtsp_server_available(), reason="no GStreamer RTSP server on this machine")
def test_rtsp_plays_through_the_guard_relay_to_the_checked_address() -> None:
    with RtspServer() as server:
        url = server.url.replace("127.0.0.1", "localhost")
        guard = NetworkGuard(AddressRules.parse("127.0.0.1"))  # by address: localhost resolves to it
        with pytest.raises(SourceError, match="blocked"):
            LiveSource(url, open_timeout_s=5, guard=NetworkGuard())
        with LiveSource(server.url, open_timeout_s=10, guard=guard) as live:
            assert live.latest(timeout_s=10) is not None


@pytest.mark.parametrize("url", ["rtsp://8.8.8.8/s?http", "tcp://8.8.8.8:1?listen", "udp://@:5000"])
def test_urls_that_listen_or_tunnel_are_refused_by_the_guard_too(url: str) -> None:
    with pytest.raises(InvalidInputError):
        check_url_options(url)
    with pytest.raises(SourceError, match=r"not accepted|must name"):
        LiveSource(url, open_timeout_s=1, guard=GUARD)


def test_closing_a_source_stops_its_proxy(media: Path) -> None:
    with serve_directory(media) as base:
        before = threading.active_count()
        for _ in range(5):
            assert _frames(f"{base}/clip.mp4") == 10
        assert threading.active_count() <= before + 2


class _RedirectingRtsp:
    """An RTSP server on 127.0.0.1 that answers every request with ``302`` to ``location``
    (after an interleaved packet first, when ``packet_first``: FFmpeg skips those while waiting)."""

    def __init__(self, location: str, packet_first: bool = False) -> None:
        self.location, self.packet_first = location, packet_first
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.listener.getsockname()[1]}/cam"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                cseq = next(
                    (
                        ln.split(b":")[1].strip()
                        for ln in data.split(b"\r\n")
                        if ln.lower().startswith(b"cseq")
                    ),
                    b"1",
                )
                packet = b"$\x00\x00\x04abcd" if self.packet_first else b""
                conn.sendall(
                    packet
                    + b"RTSP/1.0 302 Moved\r\nCSeq: "
                    + cseq
                    + b"\r\nLocation: "
                    + self.location.encode()
                    + b"\r\n\r\n"
                )

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("packet_first", [False, True])
def test_an_rtsp_redirect_to_a_refused_address_is_blocked(packet_first: bool) -> None:
    inside = socket.create_server(("127.0.0.2", 0))
    inside.settimeout(1.0)
    server = _RedirectingRtsp(f"rtsp://127.0.0.2:{inside.getsockname()[1]}/x", packet_first)
    try:
        with pytest.raises(SourceError):  # unguarded (``run``): FFmpeg follows the redirect
            LiveSource(server.url, open_timeout_s=2)
        inside.accept()[0].close()
        with pytest.raises(SourceError) as err:
            LiveSource(server.url, open_timeout_s=2, guard=GUARD)
        assert str(err.value) == f"cannot open live source {server.url}: {BLOCKED}"
        with pytest.raises(TimeoutError):
            inside.accept()  # the guarded one never came
    finally:
        server.close()
        inside.close()


def test_rtsp_units_pass_answers_and_packets_whole_and_refuse_redirects() -> None:
    from pipeline.sources.guard import _Redirect, _rtsp_units

    answer = b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 3\r\n\r\nv=0"
    packet = b"$\x01\x00\x02hi"
    assert _rtsp_units(answer + packet + b"$\x01\x00\x05ab") == (answer + packet, b"$\x01\x00\x05ab")
    assert _rtsp_units(answer[:20]) == (b"", answer[:20])
    with pytest.raises(_Redirect):
        _rtsp_units(packet + b"RTSP/1.0 301 Moved Permanently\r\nCSeq: 3\r\nLocation: rtsp://h/\r\n\r\n")


def test_https_goes_through_the_guard_too(media: Path, tmp_path: Path) -> None:
    """https is tunnelled by ``CONNECT``: a redirect to a refused address never connects there."""
    inside = socket.create_server(("127.0.0.2", 0))
    inside.settimeout(1.0)
    redirects = {"/r.mp4": f"https://127.0.0.2:{inside.getsockname()[1]}/clip.mp4"}
    try:
        with serve_directory(media, redirects=redirects) as base:
            with pytest.raises(SourceError):  # unguarded: it connects (and fails at TLS)
                VideoSource(f"{base}/r.mp4", open_timeout_s=2, read_timeout_s=2)
            inside.accept()[0].close()
            assert _error(f"{base}/r.mp4") == f"cannot open video {base}/r.mp4: {BLOCKED}"
        with pytest.raises(TimeoutError):
            inside.accept()
    finally:
        inside.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate")
def test_an_allowed_https_server_plays_through_the_guard(media: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen: list[str] = []
    with serve_directory(media, seen=seen, tls=context) as base:
        assert base.startswith("https://")
        assert _frames(f"{base}/clip.mp4") == 10
        assert seen and set(seen) == {"/clip.mp4"}
        with pytest.raises(SourceError, match="blocked"):  # the same server, not allowed
            _frames(f"{base}/clip.mp4", guard=NetworkGuard())
