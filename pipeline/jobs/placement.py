"""Where a driver's jobs run: the load of each source host and tracker host, more hosts when all are
full, and fewer once the jobs that needed them have ended.

A job goes to the least-loaded source host with room (``streams_per_host`` jobs), and each share of
its tracks to the least-loaded tracker host with room for it (``tracks_per_tracker`` tracks; the
shares of one job on different hosts). When every host is full another is started (up to
``max_hosts`` / ``max_decoders``; past that the least loaded takes more). A host started that way
stops once it held no job for ``host_idle_s``, so that the autoscaler can take its node back; the
hosts the transport started with stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.jobs.driver import DriverOptions
    from pipeline.jobs.transport import Transport


class Placement:
    """Loads of a transport's hosts, kept by the driver that places jobs on them.

    Args:
        transport: starts and stops the hosts.
        options: capacities, limits and the idle time.
    """

    def __init__(self, transport: Transport, options: DriverOptions) -> None:
        self.transport = transport
        self.options = options
        self.host_jobs: dict[int, int] = {}  # source host -> jobs on it
        self.decoder_tracks: dict[int, int] = {}  # tracker host -> tracks on it
        self._kept: set[tuple[str, int]] | None = None
        self._idle: dict[tuple[str, int], float] = {}

    def place(self, shares: list[int]) -> tuple[int, list[int]]:
        """A source host, and a tracker host for each share (its count of tracks)."""
        opts = self.options
        t = self.transport
        if self._kept is None:
            self._kept = {("host", i) for i in t.hosts} | {("decoder", i) for i in t.decoders}
        for i in t.hosts:
            self.host_jobs.setdefault(i, 0)
        for i in t.decoders:
            self.decoder_tracks.setdefault(i, 0)
        found = _least(self.host_jobs, opts.streams_per_host, 1)
        if found is None and (opts.max_hosts is None or len(self.host_jobs) < opts.max_hosts):
            found = t.add_host()
            self.host_jobs[found] = 0
        host = found if found is not None else min(self.host_jobs, key=self.host_jobs.__getitem__)
        self.host_jobs[host] += 1
        self._idle.pop(("host", host), None)
        decoders: list[int] = []
        for tracks in shares:
            free = {d: n for d, n in self.decoder_tracks.items() if d not in decoders}
            found = _least(free, opts.tracks_per_tracker, max(1, tracks))
            if found is None and (opts.max_decoders is None or len(self.decoder_tracks) < opts.max_decoders):
                found = t.add_decoder()
                self.decoder_tracks[found] = 0
            if found is None:  # every host is full: the least loaded, even one of this job
                found = min(free or self.decoder_tracks, key=self.decoder_tracks.__getitem__)
            self.decoder_tracks[found] += tracks
            self._idle.pop(("decoder", found), None)
            decoders.append(found)
        return host, decoders

    def release(self, host: int, shares: list[tuple[int, int]]) -> None:
        """A job placed on ``host`` and ``shares`` (tracker host, tracks) has ended."""
        if host in self.host_jobs:  # not a host given up meanwhile
            self.host_jobs[host] -= 1
        for decoder, tracks in shares:
            self.decoder_tracks[decoder] -= tracks

    def forget_host(self, host: int) -> None:
        """A source host was given up (it stopped answering): no job goes there again."""
        self.host_jobs.pop(host, None)
        self._idle.pop(("host", host), None)
        if self._kept is not None:
            self._kept.discard(("host", host))

    def retire_idle(self, now: float, busy_hosts: set[int], busy_decoders: set[int]) -> None:
        """Stop the hosts started for more jobs once idle for ``host_idle_s`` (``busy_*``: hosts
        with calls in flight, which are not idle whatever their load)."""
        kept = self._kept or set()
        for kind, loads, busy in (
            ("host", self.host_jobs, busy_hosts),
            ("decoder", self.decoder_tracks, busy_decoders),
        ):
            for i, load in list(loads.items()):
                if load > 0 or i in busy or (kind, i) in kept:
                    self._idle.pop((kind, i), None)
                    continue
                since = self._idle.setdefault((kind, i), now)
                if now - since >= self.options.host_idle_s:
                    del loads[i]
                    del self._idle[(kind, i)]
                    if kind == "host":
                        self.transport.remove_host(i)
                    else:
                        self.transport.remove_decoder(i)


def _least(loads: dict[int, int], capacity: int, need: int) -> int | None:
    """The least-loaded of ``loads`` that has room for ``need`` more, or None."""
    fits = [i for i, load in loads.items() if load + need <= capacity]
    return min(fits, key=loads.__getitem__) if fits else None
