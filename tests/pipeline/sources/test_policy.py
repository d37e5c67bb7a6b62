"""The API's source policy, and FFmpeg's confinement of an input to its own protocols."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.samples import write_clip
from pipeline.errors import InvalidInputError, SourceError
from pipeline.sources.policy import SourcePolicy
from pipeline.sources.video import VideoSource
from tests.fixtures.http import serve_directory


@pytest.mark.parametrize(
    "source",
    ["http://cams.example/a.mp4", "https://x.example/v.m3u8", "rtsp://8.8.8.8:554/s", "RTSPS://h/s"],
)
def test_default_policy_takes_network_urls(source: str) -> None:
    assert SourcePolicy().check(source) == source


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("/etc/passwd", "local files are not accepted"),
        ("clip.mp4", "local files are not accepted"),
        ("file:///etc/passwd", "local files are not accepted"),
        ("file:clip.mp4", "local files are not accepted"),
        ("concat:/a.ts|/b.ts", "local files are not accepted"),
        ("subfile,,0,100,:/etc/passwd", "local files are not accepted"),
        ("/dev/video0", "local files are not accepted"),
        ("udp://127.0.0.1:5000", "scheme 'udp' is not allowed"),
        ("rtsp://10.0.0.2:554/s", "source blocked"),
        ("http://127.0.0.1:6379/", "source blocked"),
        ("http://169.254.169.254/latest/meta-data/", "source blocked"),
        ("http://[::1]:8265/", "source blocked"),
        ("http://2130706433/", "source blocked"),
        ("http://localhost/a.mp4", "source blocked"),
        ("http://metadata.google.internal/", "source blocked"),
        ("http://h:99999/a.mp4", "no valid port"),
        ("ftp://h/x.mp4", "scheme 'ftp' is not allowed"),
        ("gopher://h/x", "scheme 'gopher' is not allowed"),
        ("http:///nohost.mp4", "has no host"),
        ("", "must be a URL"),
        ("http://h/a\nb", "control characters"),
    ],
)
def test_default_policy_refuses(source: str, says: str) -> None:
    with pytest.raises(InvalidInputError, match=says):
        SourcePolicy().check(source)


def test_refusal_hides_url_secrets() -> None:
    with pytest.raises(InvalidInputError) as err:
        SourcePolicy().check("ftp://user:hunter2@h/x.mp4?sig=abc")
    assert "hunter2" not in str(err.value) and "sig=abc" not in str(err.value)


def test_policy_is_configurable() -> None:
    policy = SourcePolicy.parse("https, udp://", allow_local_files=True, allow_hosts="127.0.0.1")
    assert policy.schemes == {"https", "udp"}
    assert policy.check("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000"
    assert policy.check("/data/clip.mp4") == "/data/clip.mp4"
    with pytest.raises(InvalidInputError, match="'http' is not allowed"):
        policy.check("http://h/x.mp4")


@pytest.mark.parametrize("scheme", ["file", "concat", "subfile", "pipe", "data", "ftp"])
def test_local_protocols_cannot_be_allowed_by_scheme(scheme: str) -> None:
    with pytest.raises(InvalidInputError, match="--allow-local-files"):
        SourcePolicy.parse(f"https,{scheme}")


@pytest.mark.integration
def test_remote_hls_playlist_cannot_read_local_files(tmp_path: Path) -> None:
    """A playlist served over HTTP whose segment is a local file: FFmpeg must not read that file."""
    secret = tmp_path / "local"
    secret.mkdir()
    local_segment = write_clip(secret / "segment.ts", frames=10, width=64, height=48)
    served = tmp_path / "served"
    served.mkdir()
    for name, line in (
        ("file.m3u8", f"file://{local_segment}"),
        ("path.m3u8", str(local_segment)),
        ("concat.m3u8", f"concat:{local_segment}|{local_segment}"),
    ):
        (served / name).write_text(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:1.0,\n{line}\n#EXT-X-ENDLIST\n"
        )
    with serve_directory(served) as base:
        for name in ("file.m3u8", "path.m3u8", "concat.m3u8"):
            with pytest.raises(SourceError):
                VideoSource(f"{base}/{name}", open_timeout_s=5, read_timeout_s=5).close()


@pytest.mark.integration
def test_remote_hls_playlist_with_remote_segments_still_plays(tmp_path: Path) -> None:
    write_clip(tmp_path / "segment.ts", frames=10, width=64, height=48)
    (tmp_path / "ok.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        "#EXTINF:1.0,\nsegment.ts\n#EXT-X-ENDLIST\n"
    )
    with serve_directory(tmp_path) as base, VideoSource(f"{base}/ok.m3u8") as video:
        assert sum(1 for _ in video.frames()) == 10


@pytest.mark.parametrize(
    "source",
    [
        "tcp://8.8.8.8:5000?listen",
        "tcp://8.8.8.8:5000?listen=1",
        "tcp://8.8.8.8:5000?listen=0",
        "tcp://8.8.8.8:5000?timeout=5&listen_timeout=1000",
        "tcp://8.8.8.8:5000?local_port=80",
        "udp://8.8.8.8:5000?localport=5000",
        "udp://8.8.8.8:5000?localaddr=0.0.0.0",
        "udp://@:5000",
        "rtsp://8.8.8.8/s?udp",
        "rtsp://8.8.8.8/s?http",
        "rtsps://8.8.8.8/s?tcp&https",
        "rtsp://8.8.8.8/s?multicast",
    ],
)
def test_listeners_and_rtsp_transport_options_are_refused(source: str) -> None:
    policy = SourcePolicy.parse("rtsp,rtsps,udp,tcp")
    with pytest.raises(InvalidInputError, match=r"not accepted|has no host|must name"):
        policy.check(source)


def test_a_plain_tcp_or_udp_sender_is_taken() -> None:
    policy = SourcePolicy.parse("udp,tcp,rtsp")
    for source in (
        "tcp://8.8.8.8:5000?timeout=1000000",
        "udp://8.8.8.8:5000?fifo_size=100",
        "rtsp://8.8.8.8/s?tcp",
    ):
        assert policy.check(source) == source


def test_a_name_that_does_not_resolve_is_taken_so_the_api_tells_no_names_apart() -> None:
    """It fails in the job, as "could not connect", like a host that refuses."""
    assert SourcePolicy().check("http://no-such-host.invalid/a.mp4") == "http://no-such-host.invalid/a.mp4"


def test_allow_hosts_opens_loopback_and_names() -> None:
    policy = SourcePolicy.parse("http,udp", allow_hosts="127.0.0.0/8,::1,localhost")
    for source in ("http://127.0.0.1:6379/", "http://[::1]:8/", "udp://127.0.0.1:5000", "http://localhost/x"):
        assert policy.check(source) == source
    with pytest.raises(InvalidInputError, match="source blocked"):
        policy.check("http://169.254.169.254/")
