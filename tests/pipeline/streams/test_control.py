"""The control stream on a real Redis: commands reach their job's reader once, trimmed, and go
with the job."""

from __future__ import annotations

import pytest
import redis

import pipeline.streams.control as control_module
from pipeline.errors import JobError
from pipeline.ledger import JobStatus, JobStore
from pipeline.prompts import Prompt
from pipeline.streams import Keys
from pipeline.streams.control import Command, ControlReader, send

pytestmark = pytest.mark.integration


def test_commands_reach_the_reader_once(redis_client: redis.Redis, keys: Keys) -> None:
    JobStore(redis_client, keys).create("j", {})
    send(redis_client, keys, "j", Command("add", 3, Prompt(box=(1.0, 2.0, 30.0, 40.0))))
    reader = ControlReader(redis_client, keys, "j", everything=True)
    send(redis_client, keys, "j", Command("stop"))
    assert [(c.cmd, c.track) for c in reader.poll()] == [("add", 3), ("stop", None)]  # type: ignore[union-attr]
    assert list(reader.poll()) == []


def test_a_command_for_no_job_is_refused_and_writes_nothing(redis_client: redis.Redis, keys: Keys) -> None:
    with pytest.raises(JobError, match="no job 'nope'"):
        send(redis_client, keys, "nope", Command("stop"))
    assert not redis_client.exists(keys.control("nope"))


def test_a_command_sent_as_the_job_ends_expires_with_it(redis_client: redis.Redis, keys: Keys) -> None:
    store = JobStore(redis_client, keys)
    store.create("j", {}, keep_s=100)
    store.set_status("j", JobStatus.RUNNING)
    store.set_status("j", JobStatus.SUCCEEDED)  # no control stream yet: nothing to give a TTL
    send(redis_client, keys, "j", Command("stop"))  # a client that read "running" a moment ago
    assert 90 < int(redis_client.ttl(keys.control("j"))) <= 100  # type: ignore[arg-type]


def test_the_control_stream_is_trimmed_and_the_newest_commands_stay(
    redis_client: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_module, "CONTROL_MAXLEN", 100)
    JobStore(redis_client, keys).create("j", {})
    reader = ControlReader(redis_client, keys, "j", everything=True)
    for track in range(1, 501):
        send(redis_client, keys, "j", Command("remove", track))
    n = redis_client.xlen(keys.control("j"))
    assert 100 <= n <= 100 + 200, n  # MAXLEN ~ trims whole macro-nodes (100 entries by default)
    seen = [c.track for _ in range(10) for c in reader.poll()]  # type: ignore[union-attr]
    assert seen == list(range(501 - n, 501))  # a reader behind the trim gets the rest, in order
