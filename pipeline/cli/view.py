"""``samstream view JOB``: the browser viewer of a job of ``samstream run`` (its Redis, embedded or not)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from pipeline.errors import InvalidInputError


def view(args: argparse.Namespace) -> int:
    from pipeline.api.viewer.local import check_port, serve_viewer, viewer_token
    from pipeline.streams import JobStore, Keys, connect
    from pipeline.streams.server import open_redis

    check_port(args.port)
    token, made = viewer_token(args.token)
    with contextlib.ExitStack() as stack:
        data = Path(args.data_dir) / "redis"
        if not args.redis_url and not data.is_dir():
            raise InvalidInputError(
                f"no local results under {args.data_dir}: pass --redis-url URL, or the run's --data-dir DIR"
            )
        client = connect(open_redis(stack, args.redis_url, data))
        JobStore(client, Keys(args.prefix)).get(args.job)  # no such job: one line, before serving
        serve_viewer(client, args.prefix, args.job, args.port, token, made, sys.stderr)
    return 0
