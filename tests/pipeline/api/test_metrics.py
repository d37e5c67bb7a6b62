"""The API process's ``/metrics``: served on the address it is given, not on every interface."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import redis

from pipeline.api.metrics import serve_metrics
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import Keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_metrics_listen_only_on_the_given_address(redis_client: redis.Redis, prefix: str) -> None:
    store = JobStore(redis_client, Keys(prefix))
    store.create("m1", {"source": "https://h/x", "tracks": []})
    store.set_status("m1", JobStatus.RUNNING)
    port = _free_port()
    # 127.0.0.2 is loopback too on Linux: a server on every interface would answer on 127.0.0.1 as well
    server = serve_metrics(store, port, "127.0.0.2")
    try:
        assert server.server_address[0] == "127.0.0.2"
        body = urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10).read().decode()
        assert 'samstream_jobs{status="running"} 1.0' in body and "samstream_active_jobs 1.0" in body
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        server.shutdown()
        server.server_close()
