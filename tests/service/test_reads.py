"""The read routes under hostile conditions (issue 14: 6, 9): a Redis that is down or frozen
(tests/helpers/redis_server.py: a private redis-server, stopped or SIGSTOPped), read
keys, pagination of /v1/furnaces, and no file-system paths in /v1/model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from tests.helpers.redis_server import PrivateRedis
from tests.helpers.service import WRITE, WRITE_KEY, make_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


def assert_503(response: Any, *, within: float, started: float) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and "Redis" in body["detail"]
    assert "Traceback" not in response.text
    assert response.headers.get("Retry-After")
    assert time.monotonic() - started < within


READS = ("/v1/furnaces", "/v1/furnaces/rd1/state", "/v1/model")  # /v1/model: model:desired


@pytest.mark.fault(
    "Redis frozen (SIGSTOP) under GET /v1/furnaces, /v1/furnaces/{id}/state and /v1/model",
    expected="503 with a JSON detail and Retry-After after FURNACE_REDIS_READ_TIMEOUT_SECONDS, "
    "never a 500 or a hung request; 200 again once Redis resumes",
)
def test_reads_answer_503_while_redis_is_frozen(
    private_redis: PrivateRedis, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(
        private_redis.url, key_prefix, bundle_dir, ingest=False, redis_read_timeout_seconds=1.0
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/furnaces").status_code == 200
        private_redis.freeze()
        try:
            for path in READS:
                started = time.monotonic()
                assert_503(client.get(path), within=5.0, started=started)
        finally:
            private_redis.thaw()
        wait_for("reads again", lambda: client.get("/v1/furnaces").status_code == 200, 15)
        assert client.get("/v1/furnaces/rd1/state").status_code == 404


@pytest.mark.fault(
    "Redis down (server stopped) under GET /v1/furnaces, /v1/furnaces/{id}/state, /v1/model",
    expected="503 with a JSON detail and Retry-After, like POST, never a 500",
)
def test_reads_answer_503_while_redis_is_down(
    private_redis: PrivateRedis, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(private_redis.url, key_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/v1/furnaces").status_code == 200
        private_redis.stop()
        for path in READS:
            assert_503(client.get(path), within=15.0, started=time.monotonic())


@pytest.mark.fault(
    "GET routes without a key when FURNACE_READ_KEYS is set",
    expected="401 without a key, 403 with a wrong one; read, write and admin keys are "
    "accepted; probes and /metrics stay open",
)
def test_read_keys_protect_the_read_routes(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, read_keys=["rk"])
    with TestClient(create_app(settings)) as client:
        for path in ("/v1/furnaces", "/v1/furnaces/rk1/state", "/v1/model"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "nope"}).status_code == 403, path
            for key in ("rk", WRITE_KEY):
                assert client.get(path, headers={"X-API-Key": key}).status_code in (200, 404)
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code in (200, 503), path
    open_settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(open_settings)) as client:  # the default: reads need no key
        assert client.get("/v1/furnaces").status_code == 200
    required = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, require_read_key=True)
    with TestClient(create_app(required)) as client:  # no read keys: write keys still work
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers=WRITE).status_code == 200


@pytest.mark.fault(
    "a fleet of furnaces listed by GET /v1/furnaces",
    expected="pages of at most `limit` furnaces by id, `next_cursor` to follow (null on the "
    "last page), each furnace exactly once; limit out of 1..1000 is 422",
)
def test_furnaces_are_listed_page_by_page(
    redis_client: redis.Redis, redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    ids = [f"pg{k:02d}" for k in range(7)]
    redis_client.sadd(f"{key_prefix}furnaces", *ids)
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(settings)) as client:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            body = client.get("/v1/furnaces", params=params).json()
            assert len(body["furnaces"]) <= 3
            seen += [f["furnace_id"] for f in body["furnaces"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == ids and pages == 3
        assert client.get("/v1/furnaces").json()["next_cursor"] is None  # default limit 100
        for bad in ({"limit": 0}, {"limit": 1001}, {"cursor": "a b"}):
            assert client.get("/v1/furnaces", params=bad).status_code == 422, bad
        schema = client.get("/openapi.json").json()
        page = schema["components"]["schemas"]["FurnacesOut"]["properties"]
        assert "next_cursor" in page
        names = {p["name"] for p in schema["paths"]["/v1/furnaces"]["get"]["parameters"]}
        assert {"limit", "cursor"} <= names


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.fault(
    "GET /v1/model read for file-system paths (training data, run directories, bundle path)",
    expected="no absolute path, run directory or models folder in the response; `bundle` is "
    "the bundle folder's name",
)
def test_the_model_route_exposes_no_paths(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    assert settings.bundle.startswith("/")  # served from a path: the worst case
    with TestClient(create_app(settings)) as client:
        out = client.get("/v1/model").json()
    assert out["bundle"] == bundle_dir.name
    leaks = [s for s in _strings(out) if "/" in s or "\\" in s]
    assert leaks == [], leaks
    assert out["training"]  # the non-path facts stay (windows, steps, ...)
