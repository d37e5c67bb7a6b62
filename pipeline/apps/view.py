"""The viewer for jobs of ``samstream run``: the API's app over a run's Redis, served on this machine.

``samstream view JOB`` serves it until interrupted; ``samstream run --view`` serves it on a thread
while the job runs. The page is the same as ``samstream serve``'s, and so are its routes (track
commands go to the job's control stream, which the run reads); only creating jobs is refused:
``samstream run`` does that here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from pipeline.errors import InvalidInputError
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import Keys

HOST = "127.0.0.1"  # a local viewer listens on loopback only


class RunBackend:
    """The API's backend for jobs that ``samstream run`` processes elsewhere on this machine."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def submit(self, job_id: str) -> None:
        raise InvalidInputError("this viewer shows jobs of samstream run; start a job with samstream run")

    def running(self, job_id: str) -> bool:
        """A running job is held by its run (which reads the cancel from the control stream)."""
        return self.store.get(job_id).status is JobStatus.RUNNING


@dataclass(frozen=True)
class LocalViewer:
    """A viewer being served.

    Attributes:
        url: the page of the job.
        token: what its login form asks for.
        made_token: the token was made here (so the user must be told it).
        thread: the thread the server runs on.
    """

    url: str
    token: str
    made_token: bool
    thread: threading.Thread


def viewer_token(given: str | None) -> tuple[str, bool]:
    """``given``, else ``$SAMSTREAM_API_TOKEN``, else a fresh random one (and whether it was made)."""
    token = given or os.environ.get("SAMSTREAM_API_TOKEN")
    return (token, False) if token else (secrets.token_urlsafe(18), True)


def check_port(port: int) -> None:
    """Refuse, in one line, a port that is not a port or that another process holds."""
    if not 1 <= port < 65536:
        raise InvalidInputError(f"--port must be a TCP port (1-65535), got {port}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise InvalidInputError(
                f"port {port} on {HOST} is not free ({exc.strerror}): pick another"
            ) from None


def _server(client: redis.Redis, prefix: str, port: int, token: str) -> Any:
    import uvicorn

    from pipeline.api import ApiSettings, create_app

    store = JobStore(client, Keys(prefix))
    app = create_app(ApiSettings(token=token, prefix=prefix), client, RunBackend(store))
    return uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning", access_log=False))


def announce(viewer: LocalViewer, out: TextIO) -> None:
    """Tell the user where the page is (and its token when it was made here: never in the URL)."""
    print(f"samstream: viewer on {viewer.url}", file=out)
    if viewer.made_token:
        print(f"samstream: the viewer's token (asked once by the page): {viewer.token}", file=out)
    out.flush()


def serve_viewer(
    client: redis.Redis, prefix: str, job_id: str, port: int, token: str, made: bool, out: TextIO
) -> None:
    """Serve the viewer of ``job_id`` until SIGINT or SIGTERM (``samstream view``)."""
    from pipeline.signals import InterruptOnSignals

    with InterruptOnSignals(), viewer_alongside(client, prefix, job_id, port, out, (token, made)) as viewer:
        try:
            while viewer.thread.is_alive():
                viewer.thread.join(0.5)
        except KeyboardInterrupt:  # what the signals raise here: the server stops with the block
            pass


@contextlib.contextmanager
def viewer_alongside(
    client: redis.Redis,
    prefix: str,
    job_id: str,
    port: int,
    out: TextIO,
    token: tuple[str, bool] | None = None,
) -> Iterator[LocalViewer]:
    """Serve the viewer of ``job_id`` on a thread while the block runs (``samstream run --view``).

    The URL is printed once the server listens. ``token``: the token and whether it was made here
    (default: :func:`viewer_token`'s).
    """
    check_port(port)
    secret, made = token or viewer_token(None)
    server = _server(client, prefix, port, secret)
    server.install_signal_handlers = lambda: None  # the caller owns the signals
    thread = threading.Thread(target=server.run, name="viewer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise InvalidInputError(f"the viewer could not listen on {HOST}:{port}")
        time.sleep(0.05)
    viewer = LocalViewer(f"http://{HOST}:{port}/view/jobs/{job_id}", secret, made, thread)
    announce(viewer, out)
    try:
        yield viewer
    finally:
        server.should_exit = True
        thread.join(5)
