"""``samstream view JOB``: the browser viewer of a job of ``samstream run`` (its Redis, embedded or not)."""

from __future__ import annotations

import argparse
import contextlib
import sys


def view(args: argparse.Namespace) -> int:
    from pipeline.apps.view import check_port, serve_viewer, viewer_token
    from pipeline.cli.options import results_redis
    from pipeline.ledger import JobStore
    from pipeline.streams import Keys

    check_port(args.port)
    token, made = viewer_token(args.token)
    with contextlib.ExitStack() as stack:
        client = results_redis(stack, args)
        JobStore(client, Keys(args.prefix)).get(args.job)  # no such job: one line, before serving
        serve_viewer(client, args.prefix, args.job, args.port, token, made, sys.stderr)
    return 0
