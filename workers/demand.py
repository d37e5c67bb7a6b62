"""Live streams' demand on the encoder pool, for Serve's autoscaler.

Serve scales the pool by the requests in flight per replica (``target_ongoing``). While live
streams run, the driver's pacing (:mod:`pipeline.jobs.pacing`) keeps about one call in flight per
replica, whatever the streams ask for: frames the encoders cannot take are never sent. So the
requests in flight no longer say what the streams want, and a pool that could grow would not
(worse, at one call a replica against a target of two, Serve would shrink it).

The driver says it instead: once a window it publishes how many replicas its live streams need
(each stream's rate times its image size's cost per frame, over the share of time an encoder
can be kept busy: :meth:`pipeline.jobs.driver.JobDriver._tell_demand`), in Ray's
internal key-value store (namespace ``samstream``, one key per driver, with its time: no address
or secret travels). The pool's autoscaling policy (:class:`EncoderDemandPolicy`, run by Serve's
controller) takes the larger of Serve's own answer (requests in flight) and the sum of the
drivers' fresh figures; Serve then applies the pool's bounds and its up- and downscale delays.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

log = logging.getLogger(__name__)

NAMESPACE = "samstream"
PREFIX = "encoder-demand/"
FRESH_S = 10.0  # a driver's figure older than this is not counted (the driver stopped)
FORGET_S = 3600.0  # ... and one older than this is deleted


class DemandBoard:
    """One driver's line on the board: :meth:`publish` its replicas wanted (Ray must be connected)."""

    def __init__(self, name: str | None = None) -> None:
        self.key = (PREFIX + (name or uuid.uuid4().hex)).encode()

    def publish(self, replicas: int) -> None:
        from ray.experimental import internal_kv

        value = json.dumps({"replicas": int(replicas), "at": time.time()}).encode()
        try:
            internal_kv._internal_kv_put(self.key, value, overwrite=True, namespace=NAMESPACE)
        except Exception as exc:  # the autoscaler goes by the requests in flight meanwhile
            log.debug("publishing the encoder demand: %s", exc)

    def withdraw(self) -> None:
        from ray.experimental import internal_kv

        try:
            internal_kv._internal_kv_del(self.key, namespace=NAMESPACE)
        except Exception as exc:  # it goes stale, then is deleted by the policy
            log.debug("withdrawing the encoder demand: %s", exc)


def read_board(now: float | None = None) -> int | None:
    """The replicas the drivers want (their fresh figures summed), None when none is fresh."""
    from ray.experimental import internal_kv

    now = time.time() if now is None else now
    total: int | None = None
    for key in internal_kv._internal_kv_list(PREFIX, namespace=NAMESPACE) or []:
        raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        try:
            entry = json.loads(raw or b"{}")
            age, replicas = now - float(entry["at"]), int(entry["replicas"])
        except (ValueError, KeyError, TypeError):
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)
            continue
        if age > FORGET_S:
            internal_kv._internal_kv_del(key, namespace=NAMESPACE)
        elif age <= FRESH_S:
            total = (total or 0) + max(0, replicas)
    return total


class EncoderDemandPolicy:
    """The pool's Serve autoscaling policy: the larger of Serve's queue-length answer and the
    drivers' demand (see the module docstring). Serve instantiates it once, in its controller.

    Args:
        every_s: how often the board is read (the controller asks every tick, ~0.1 s).
    """

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._read_at = -math.inf
        self._wanted: int | None = None

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy

        queued, _ = replica_queue_length_autoscaling_policy(ctx)
        now = time.monotonic()
        if now - self._read_at >= self.every_s:
            self._read_at = now
            try:
                self._wanted = read_board()
            except Exception as exc:  # Serve's own answer stands
                log.warning("reading the encoder demand: %s", exc)
                self._wanted = None
        return max(float(queued), float(self._wanted or 0)), {}
