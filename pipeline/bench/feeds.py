"""Many live UDP feeds from one thread: the density benchmark's cameras.

A short clip of :func:`pipeline.bench.samples.render_frame` pictures is encoded once (H.264, low
latency, a keyframe every ``gop`` frames) into MPEG-TS in memory, cut at frame boundaries; one
thread then sends each frame's packets to every feed's UDP port at that feed's pace, the feeds
spread evenly over a frame interval, 7 TS packets per datagram as cameras send them. Encoding
once keeps the senders' CPU cost small beside what they measure.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
import threading
import time
from dataclasses import dataclass
from typing import cast

TS_DATAGRAM = 7 * 188


@dataclass(frozen=True)
class TsClip:
    """An MPEG-TS stream cut at frame boundaries: ``frames[i]`` holds frame i's packets."""

    frames: tuple[bytes, ...]
    fps: float
    width: int
    height: int

    @classmethod
    def encode(cls, frames: int, fps: float, width: int = 640, height: int = 360, gop: int = 5) -> TsClip:
        import av
        from av.video.stream import VideoStream

        from pipeline.bench.samples import render_frame

        class _Collect:
            def __init__(self) -> None:
                self.data = bytearray()

            def write(self, b: bytes) -> int:
                self.data += b
                return len(b)

        sink = _Collect()
        chunks: list[bytes] = []
        with av.open(sink, "w", format="mpegts", options={"flush_packets": "1"}, buffer_size=4096) as out:
            stream = cast(VideoStream, out.add_stream("libx264", rate=round(fps)))
            stream.pix_fmt = "yuv420p"
            stream.width, stream.height = width, height
            stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(gop), "bf": "0"}
            for i in range(frames):
                picture = av.VideoFrame.from_ndarray(render_frame(i, width, height), format="rgb24")
                picture.pts = i
                out.mux(stream.encode(picture))
                chunks.append(bytes(sink.data))
                sink.data.clear()
            out.mux(stream.encode())
        if sink.data and chunks:
            chunks[-1] += bytes(sink.data)
        return cls(tuple(chunks), fps, width, height)


class UdpFeeds:
    """Sends a :class:`TsClip` to ``127.0.0.1:port`` for each port, looping, until :meth:`stop`.

    Feed k's frames leave at ``start + (i + k / n) / fps``: the feeds are spread over a frame
    interval, as independent cameras are.
    """

    def __init__(self, clip: TsClip, ports: list[int]) -> None:
        self.clip = clip
        self.ports = ports
        self.sent = [0] * len(ports)
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._thread = threading.Thread(target=self._run, name="udp feeds", daemon=True)

    @property
    def urls(self) -> list[str]:
        return [f"udp://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> UdpFeeds:
        self._thread.start()
        return self

    def _run(self) -> None:
        n, fps, frames = len(self.ports), self.clip.fps, self.clip.frames
        start = time.monotonic() + 0.1
        queue = [(start + k / (n * fps), k, 0) for k in range(n)]
        heapq.heapify(queue)
        while queue and not self._stop.is_set():
            due, k, i = heapq.heappop(queue)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            chunk = frames[i % len(frames)]
            for at in range(0, len(chunk), TS_DATAGRAM):
                with contextlib.suppress(OSError):  # nobody listens yet: a camera does not care
                    self._sock.sendto(chunk[at : at + TS_DATAGRAM], ("127.0.0.1", self.ports[k]))
            self.sent[k] += 1
            heapq.heappush(queue, (start + (i + 1 + k / n) / fps, k, i + 1))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._sock.close()


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports on 127.0.0.1 that nothing is bound to now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
