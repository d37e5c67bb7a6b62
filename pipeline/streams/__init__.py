"""Redis streams: key names, the wire format, events, reading, and a local server (a job's record
itself is :mod:`pipeline.ledger`'s).

Plain Python over redis-py (no Ray, no torch). The format is documented in ``docs/wire-format.md``.
"""

from pipeline.streams.connection import connect, describe, redact_redis_url
from pipeline.streams.keys import Keys, validate_job_id
from pipeline.streams.publisher import Publisher
from pipeline.streams.results import MaskReader, read_events
from pipeline.streams.server import EmbeddedRedis, redis_server_executable
from pipeline.streams.wire import (
    WIRE_VERSION,
    Event,
    MaskEntry,
    WireFormatError,
    decode_entry,
    decode_event,
    decode_mask_entry,
    encode_entry,
    encode_event,
    entry_id,
    frame_of,
)

__all__ = [
    "WIRE_VERSION",
    "EmbeddedRedis",
    "Event",
    "Keys",
    "MaskEntry",
    "MaskReader",
    "Publisher",
    "WireFormatError",
    "connect",
    "decode_entry",
    "decode_event",
    "decode_mask_entry",
    "describe",
    "encode_entry",
    "encode_event",
    "entry_id",
    "frame_of",
    "read_events",
    "redact_redis_url",
    "redis_server_executable",
    "validate_job_id",
]
