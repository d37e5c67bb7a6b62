"""How the driver reaches the stages: a :class:`Transport`, and one that runs them in this process.

The driver sees the stages as numbered source hosts, an encoder pool and numbered tracker hosts,
and moves *handles* between them: a read gives a handle to each group's frames, an encode takes
such a handle and gives one to the embeddings, a decode takes that. The driver only ever fetches
small values (read replies, track replies); pixels and embeddings go from stage to stage. Every
call to one stage runs in the order it was made (as calls to one Ray actor from one caller do).

:class:`InProcessTransport` runs plain stage objects on one worker thread each, with futures as
handles: the driver's job loop is tested with it, without Ray (``workers.transport`` is the Ray
one).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pipeline.frames import EncodedFrame, Frame
from pipeline.prompts import Prompt
from pipeline.sources.host import ReadReply, ReadRequest, SourceHost
from pipeline.tracking.host import TrackerHost, TrackReply, TrackSetup

Handle = Any  # hashable: a Ray ObjectRef, or a Future in process
T = TypeVar("T")


class Numbered(dict[int, T]):
    """A transport's hosts of one kind by id: :meth:`add` gives the next id (ids are never reused,
    so that a host stopped and another started are never taken for each other)."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0

    def add(self, item: T) -> int:
        i = self._next
        self._next += 1
        self[i] = item
        return i


class Transport(Protocol):
    """The stages as the driver calls them."""

    @property
    def hosts(self) -> list[int]:
        """Ids of the source hosts running now (an id is never reused)."""
        ...

    @property
    def decoders(self) -> list[int]:
        """Ids of the tracker hosts running now."""
        ...

    def add_host(self) -> int:
        """Start another source host; its id."""
        ...

    def add_decoder(self) -> int:
        """Start another tracker host; its id."""
        ...

    def remove_host(self, host: int) -> None:
        """Stop a source host that holds no job."""
        ...

    def remove_decoder(self, decoder: int) -> None:
        """Stop a tracker host that holds no job."""
        ...

    def read(
        self, host: int, groups: Sequence[Sequence[ReadRequest]], wait_s: float
    ) -> tuple[Handle, list[Handle]]:
        """Read from a source host (:meth:`SourceHost.read`): a handle to the replies (one list
        per group) and one handle to each group's frames."""
        ...

    def encoder_slots(self) -> tuple[int, bool]:
        """Encoders working at once now, and whether there may be more (an autoscaled pool)."""
        ...

    def encoder_demand(self, replicas: int) -> None:
        """The encoders the live jobs need: an autoscaled pool grows or shrinks to it (while live
        jobs run, paced reads keep the calls in flight from saying so)."""
        ...

    def encode(self, frames: Handle) -> Handle:
        """Encode a group's frames; a handle to their :class:`EncodedFrame`\\ s (same order)."""
        ...

    def decode(
        self,
        decoder: int,
        setups: Mapping[str, TrackSetup],
        embeddings: Handle,
        parts: Mapping[str, Sequence[Handle]] | None = None,
    ) -> Handle:
        """Track and publish encoded frames on a tracker host; a handle to its replies. ``parts``:
        split jobs' parts' replies to the same frames (handles that are ready)."""
        ...

    def forget(self, decoder: int, job_id: str) -> None:
        """A tracker host drops its state of the job (the next call naming it starts from Redis)."""
        ...

    def control(self, decoder: int, job_id: str, cmd: str, track: int, prompt: Prompt | None) -> None:
        """A track command, ordered with the decode calls made before and after it."""
        ...

    def release(self, job_id: str, host: int, decoder: int) -> None:
        """The job has ended: its source and tracker state go."""
        ...

    def wait(self, handles: Sequence[Handle], timeout: float) -> set[Handle]:
        """Those of ``handles`` whose values are ready, waiting up to ``timeout`` for a first one."""
        ...

    def get(self, handle: Handle) -> Any:
        """The value behind a ready handle; raises the error of the call that made it."""
        ...

    def shutdown(self) -> None: ...


class Encoder(Protocol):
    def encode(self, frames: Sequence[Frame]) -> list[EncodedFrame]: ...


class InProcessTransport:
    """Plain stage objects in this process, each on a worker thread of its own.

    Args:
        make_host: makes a source host.
        encoder: the encoder stage (:class:`~pipeline.encoding.stage.FrameEncoder` or a stub).
        make_decoder: makes a tracker host.
        hosts: source hosts to start with.
        decoders: tracker hosts to start with.
    """

    def __init__(
        self,
        make_host: Callable[[], SourceHost],
        encoder: Encoder,
        make_decoder: Callable[[], TrackerHost],
        hosts: int = 1,
        decoders: int = 1,
    ) -> None:
        self._make_host = make_host
        self._make_decoder = make_decoder
        self.encoder = encoder
        self.source_hosts: Numbered[SourceHost] = Numbered()
        self.tracker_hosts: Numbered[TrackerHost] = Numbered()
        self._host_threads: dict[int, cf.ThreadPoolExecutor] = {}
        self._decoder_threads: dict[int, cf.ThreadPoolExecutor] = {}
        self._encoder_thread = cf.ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self.calls: list[tuple[str, int]] = []  # (stage, frames or jobs): what went where, for tests
        self.demanded: list[int] = []  # the encoders the driver said it needs, each window
        for _ in range(hosts):
            self.add_host()
        for _ in range(decoders):
            self.add_decoder()

    @property
    def hosts(self) -> list[int]:
        return list(self.source_hosts)

    @property
    def decoders(self) -> list[int]:
        return list(self.tracker_hosts)

    def add_host(self) -> int:
        i = self.source_hosts.add(self._make_host())
        self._host_threads[i] = cf.ThreadPoolExecutor(1, thread_name_prefix="source-host")
        return i

    def add_decoder(self) -> int:
        i = self.tracker_hosts.add(self._make_decoder())
        self._decoder_threads[i] = cf.ThreadPoolExecutor(1, thread_name_prefix="tracker-host")
        return i

    def remove_host(self, host: int) -> None:
        # Not waiting: a host given up for not answering may never finish its call.
        self._host_threads.pop(host).shutdown(wait=False, cancel_futures=True)
        self.source_hosts.pop(host).shutdown()

    def remove_decoder(self, decoder: int) -> None:
        self._decoder_threads.pop(decoder).shutdown(wait=True)
        del self.tracker_hosts[decoder]

    def read(
        self, host: int, groups: Sequence[Sequence[ReadRequest]], wait_s: float
    ) -> tuple[Handle, list[Handle]]:
        done = self._host_threads[host].submit(self.source_hosts[host].read, groups, wait_s)
        meta: cf.Future[list[list[ReadReply]]] = cf.Future()
        parts: list[cf.Future[list[Frame]]] = [cf.Future() for _ in groups]

        def split(f: cf.Future[tuple[list[list[ReadReply]], list[list[Frame]]]]) -> None:
            error = f.exception()
            if error is not None:
                meta.set_exception(error)
                for part in parts:
                    part.set_exception(error)
                return
            replies, frames = f.result()
            meta.set_result(replies)
            for out, group in zip(parts, frames, strict=True):
                out.set_result(group)

        done.add_done_callback(split)
        self.calls.append(("read", sum(len(g) for g in groups)))
        return meta, parts

    def encoder_slots(self) -> tuple[int, bool]:
        return 1, False  # one encoder thread

    def encoder_demand(self, replicas: int) -> None:
        self.demanded.append(replicas)  # one encoder thread whatever is asked; tests read it

    def encode(self, frames: Handle) -> Handle:
        def run() -> list[EncodedFrame]:
            batch = frames.result()
            self.calls.append(("encode", len(batch)))
            return self.encoder.encode(batch)

        return self._encoder_thread.submit(run)

    def decode(
        self,
        decoder: int,
        setups: Mapping[str, TrackSetup],
        embeddings: Handle,
        parts: Mapping[str, Sequence[Handle]] | None = None,
    ) -> Handle:
        host = self.tracker_hosts[decoder]

        def run() -> list[TrackReply]:
            encoded = embeddings.result()
            self.calls.append(("decode", len(encoded)))
            answers = {j: [_mine(h.result(), j) for h in hs] for j, hs in (parts or {}).items()}
            return host.process(setups, encoded, answers)

        return self._decoder_threads[decoder].submit(run)

    def forget(self, decoder: int, job_id: str) -> None:
        self._decoder_threads[decoder].submit(self.tracker_hosts[decoder].close, [job_id])

    def control(self, decoder: int, job_id: str, cmd: str, track: int, prompt: Prompt | None) -> None:
        self._decoder_threads[decoder].submit(self.tracker_hosts[decoder].control, job_id, cmd, track, prompt)

    def release(self, job_id: str, host: int, decoder: int) -> None:
        self.source_hosts[host].close([job_id])
        self._decoder_threads[decoder].submit(self.tracker_hosts[decoder].close, [job_id])

    def wait(self, handles: Sequence[Handle], timeout: float) -> set[Handle]:
        if not handles:
            return set()
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return set(done) | {h for h in handles if h.done()}

    def get(self, handle: Handle) -> Any:
        return handle.result()

    def shutdown(self) -> None:
        for pool in [*self._host_threads.values(), *self._decoder_threads.values(), self._encoder_thread]:
            pool.shutdown(wait=True, cancel_futures=True)
        for host in self.source_hosts.values():
            host.shutdown()


def _mine(replies: Sequence[TrackReply], job_id: str) -> TrackReply:
    """A part's reply for ``job_id`` among a tracker host's replies (an error when it has none)."""
    for reply in replies:
        if reply.job_id == job_id:
            return reply
    return TrackReply(job_id, error=f"a part of job {job_id!r} gave no reply")


def part_replies(
    job_ids: Sequence[str], answers: Sequence[Sequence[TrackReply]]
) -> dict[str, list[TrackReply]]:
    """The parts' replies by job, from the flat lists a transport hands over (one per part call,
    ``job_ids[i]`` naming the job of call ``i``)."""
    out: dict[str, list[TrackReply]] = {}
    for job_id, replies in zip(job_ids, answers, strict=True):
        out.setdefault(job_id, []).append(_mine(replies, job_id))
    return out
