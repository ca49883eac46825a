"""OpenAPI truth (issue 14 item 8): schemathesis generates requests from the app's own
/openapi.json and checks every response against it (status codes documented, bodies matching
their schema, no 5xx), on the real app with its lifespan and a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

from service.main import create_app
from tests.helpers.service import ADMIN_KEY, WRITE_KEY, make_settings

EXAMPLES_PER_OPERATION = 420  # x 5 operations: >= 2 000 cases


@pytest.fixture(scope="module")
def app_client(redis_url: str, module_prefix: str, bundle_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(redis_url, module_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.fault(
    "2 000+ requests generated from /openapi.json (schemathesis): wrong types, strings for "
    "numbers, booleans in arrays, missing and unknown fields, odd headers and paths",
    expected="every response is documented and matches its schema; no 5xx",
)
@pytest.mark.timeout(300)
def test_every_response_matches_the_openapi_document(app_client: TestClient) -> None:
    schema = schemathesis.openapi.from_dict(app_client.get("/openapi.json").json())
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 5
    failures: list[str] = []
    cases = 0
    keys = [WRITE_KEY, ADMIN_KEY, None, "wrong"]
    for operation in operations:
        # Reads are open unless FURNACE_REQUIRE_READ_KEY: ignored_auth flags that, and on a
        # GET the only "invalid" part negative generation can make is that key header. Bodies
        # (POST) must reject every invalid value: "2" for a number, [true, false, true] ...
        excluded: list[Any] = [ignored_auth, positive_data_acceptance]
        if operation.method.lower() == "get":
            excluded.append(negative_data_rejection)
        strategy = operation.as_strategy(generation_mode=GenerationMode.POSITIVE) | (
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
        )

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @hypothesis.given(case=strategy, pick=hypothesis.strategies.integers(0, 3))
        def run(case: Any, pick: int) -> None:
            nonlocal cases
            cases += 1
            key = keys[pick]
            headers = dict(case.headers or {})
            if key is not None:
                headers["X-API-Key"] = key
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            kwargs.pop("follow_redirects", None)
            response = app_client.request(**kwargs)
            try:
                case.validate_response(
                    response,
                    excluded_checks=excluded,  # noqa: B023 - run() is called in this iteration
                    transport_kwargs=kwargs,
                )
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report all at the end
                what = "; ".join(str(e).splitlines()[0] for e in _leaves(exc))
                body = response.text[:200]
                failures.append(
                    f"{case.method} {case.formatted_path} {response.status_code}: {what} | {body}"
                )

        run()
    assert not failures, f"{len(failures)} of {cases} cases failed:\n" + "\n".join(
        sorted(set(failures))[:20]
    )
    assert cases >= 2000


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
