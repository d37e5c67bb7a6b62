"""The ledger's tests run on a real Redis: the same fixtures as the streams' tests."""

from tests.pipeline.streams.conftest import keys, redis_client, redis_server

__all__ = ["keys", "redis_client", "redis_server"]
