"""Property-based tests of the API against its own OpenAPI spec (schemathesis): never a 5xx,
every response conforms to the spec (status code, content type, body schema)."""

from __future__ import annotations

import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.api import ApiSettings, create_app
from pipeline.ledger import JobStatus, JobStore
from pipeline.streams import Keys
from tests.pipeline.api.conftest import AUTH, RecordingBackend

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _schema(settings: ApiSettings, client: redis.Redis, backend: RecordingBackend) -> schemathesis.BaseSchema:
    app = create_app(settings, client, backend)
    store = JobStore(client, Keys(settings.prefix))
    # Some jobs to find, so generated ids like these reach the handlers past the 404.
    for job_id, live in (("j1", False), ("s1", True)):
        store.create(job_id, {"source": "https://h/x", "tracks": [], "live": live})
    store.set_status("j1", JobStatus.RUNNING)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


@pytest.mark.slow
def test_no_request_makes_a_server_error(
    settings: ApiSettings, redis_client: redis.Redis, backend: RecordingBackend
) -> None:
    schema = _schema(settings, redis_client, backend)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    tried: list[str] = []
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(), known=st.sampled_from([None, "j1", "s1"]))
        @hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case, known: str | None) -> None:
            if known and case.path_parameters and "job_id" in case.path_parameters:
                case.path_parameters["job_id"] = known  # past the 404, into the handler
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        check()
        tried.append(operation.label)
    assert len(tried) == len(operations)
