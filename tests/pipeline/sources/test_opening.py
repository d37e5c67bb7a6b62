"""Source names safe to show (:func:`redact` for one URL, :func:`redact_text` for a message), and
which sources a job and a live stream read (the schemes, written once)."""

from __future__ import annotations

import pytest

from pipeline.sources.opening import (
    LIVE_SCHEMES,
    NETWORK_SCHEMES,
    URL_SCHEMES,
    is_feed,
    kind_error,
    redact,
    redact_text,
)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rtsp://admin:pw@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
        ("https://h.example/a.mp4?X-Amz-Signature=abc&e=1", "https://h.example/a.mp4?…"),
        ("https://h.example/a.mp4#t=10,20", "https://h.example/a.mp4#…"),
        ("https://u:p@h.example/a.mp4?sig=1#t", "https://u:***@h.example/a.mp4?…"),
        ("https://ghp_token@h.example/repo.mp4", "https://***@h.example/repo.mp4"),  # a token as user name
        (
            "rtsp://admin:p@ss:w@cam:554/x",
            "rtsp://admin:***@cam:554/x",
        ),  # an unescaped "@", as FFmpeg reads it
        ("http://[::1]:8080/x.mp4", "http://[::1]:8080/x.mp4"),
        ("https://h.example/a@b.mp4", "https://h.example/a@b.mp4"),  # an '@' in the path is no user
        ("/data/clip.mp4", "/data/clip.mp4"),
        ("/data/take?1#2.mp4", "/data/take?1#2.mp4"),  # a path's '?' and '#' are part of its name
    ],
)
def test_redact_hides_credentials_query_and_fragment(uri: str, shown: str) -> None:
    assert redact(uri) == shown


def test_redact_text_hides_every_url_and_the_sources_secrets() -> None:
    source = "rtsp://admin:s3cr%40t@cam.local/live?key=abcdef"
    text = (
        f"cannot open {source}: refused. Redirected to 'https://x:y@other.example/p?q=1'; "
        "FFmpeg said: auth s3cr@t rejected for key=abcdef"
    )
    assert redact_text(text, source) == (
        "cannot open rtsp://admin:***@cam.local/live?…: refused. Redirected to "
        "'https://x:***@other.example/p?…'; FFmpeg said: auth *** rejected for ***"
    )
    assert redact_text("no URL here: 3 frames", source) == "no URL here: 3 frames"
    signed = "https://ghp_T0k3n@h.example/a.mp4?Expires=99&Signature=f00dfeed"
    assert redact_text("sig f00dfeed refused for ghp_T0k3n", signed) == "sig *** refused for ***"
    assert redact_text("local /data/a.mp4 missing", "/data/a.mp4") == "local /data/a.mp4 missing"


@pytest.mark.parametrize(
    ("source", "feed"),
    [
        ("rtsp://cam/live", True),
        ("RTSPS://cam/live", True),
        ("udp://@:5000", True),
        ("tcp://10.0.0.2:9000", True),
        ("/dev/video0", True),
        ("https://example.com/stream.m3u8", False),  # live only when asked
        ("clip.mp4", False),
        ("file:clip.mp4", False),
    ],
)
def test_a_source_is_a_feed_by_its_scheme(source: str, feed: bool) -> None:
    assert is_feed(source) is feed


def test_jobs_read_files_and_urls_and_streams_read_feeds() -> None:
    assert kind_error("clip.mp4", live=False) is None
    assert kind_error("https://h/clip.mp4", live=False) is None
    assert kind_error("https://h/live.m3u8", live=True) is None
    assert kind_error("udp://@:5000", live=True) is None
    assert "POST it to /streams" in (kind_error("rtsp://cam/live", live=False) or "")
    assert kind_error("ftp://h/clip.mp4", live=True) == "a live stream cannot read ftp:// sources"
    # every scheme a live stream reads is one a service can be told to allow
    assert set(LIVE_SCHEMES) <= set(NETWORK_SCHEMES) and set(URL_SCHEMES) <= set(LIVE_SCHEMES)
