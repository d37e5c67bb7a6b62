"""The stall watchdog of file and URL sources: no picture for ``stall_s`` fails the source, over a
real loopback HTTP server that goes on with audio only or stops sending; a slow reader is no stall."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import SourceError
from pipeline.sources.reader import FileReader
from tests.fixtures.stalling_http import serve_stalling, write_video_then_audio


@pytest.fixture(scope="module")
def video_then_audio(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int]:
    """4 s of video then 2 minutes of audio, and where the video ends."""
    path, end = write_video_then_audio(tmp_path_factory.mktemp("stall") / "v.ts")
    return path.read_bytes(), end


def _read_until_error(reader: FileReader, limit_s: float) -> tuple[list[int], SourceError, float]:
    """Take frames as a host does until the reader fails; its frames, error and when it came."""
    got: list[int] = []
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            frames, ended = reader.take(got[-1] if got else None, 8)
        except SourceError as exc:
            return got, exc, time.monotonic() - start
        assert not ended, "a source that stalls must not look like one that ended"
        got += [f.index for f in frames]
        time.sleep(0.02)
    raise AssertionError(f"no error within {limit_s} s; frames {got[:3]}…{got[-3:]}")


@pytest.fixture
def reader_of() -> Iterator[list[FileReader]]:
    made: list[FileReader] = []
    yield made
    for r in made:
        r.close()


@pytest.mark.slow
@pytest.mark.parametrize("then", ["trickle", "stall"])
def test_a_url_that_stops_giving_pictures_fails_within_the_stall_limit(
    video_then_audio: tuple[bytes, int], then: str, reader_of: list[FileReader]
) -> None:
    data, video_end = video_then_audio
    with serve_stalling(data, video_end + 4000, then) as url:
        reader = FileReader(url, 256, stall_s=2.0)
        reader_of.append(reader)
        frames, error, after_s = _read_until_error(reader, 20.0)
        # Every picture that was sent arrives first (the decoder may hold its last few back).
        assert frames == list(range(len(frames))) and len(frames) >= 30
        assert "no picture for 2 s" in str(error)
        assert after_s < 2.0 + 3.0  # the pictures took well under a second; then the limit
        pass_ = reader._pass
        assert pass_ is not None
        deadline = time.monotonic() + 3.0  # the decode thread ends by itself, not held by FFmpeg
        while not pass_.thread.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pass_.thread.finished


@pytest.mark.slow
def test_a_reader_that_takes_slowly_is_not_a_stall(tmp_path: Path, reader_of: list[FileReader]) -> None:
    path, _ = write_video_then_audio(tmp_path / "short.ts", video_s=3.0, audio_s=3.0)
    reader = FileReader(str(path), 256, queue_size=4, stall_s=0.3)
    reader_of.append(reader)
    got: list[int] = []
    ended = False
    while not ended:
        time.sleep(0.5)  # longer than the limit between takes: the buffer is full meanwhile
        frames, ended = reader.take(got[-1] if got else None, 2)
        got += [f.index for f in frames]
    assert got == list(range(30))
