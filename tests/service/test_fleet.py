"""Fleet behaviour of one or more replicas: reloads that follow `model:desired`, and HTTP
back-pressure (docs/design/serving.md 1.7, 3.2). Real Redis, real bundles, real ONNX Runtime."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.types import WindowSpec
from tests.helpers.service import (
    ADMIN,
    T0,
    WRITE,
    make_settings,
    tampered_copy,
    wait_for,
    window_body,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def models_dir(bundle_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    for name in ("good", "next"):
        shutil.copytree(bundle_dir, root / name)
    tampered_copy(bundle_dir, root / "bad", "camera.onnx")
    return root


def _bundle(client: TestClient) -> str:
    return str(client.get("/v1/model").json()["bundle"])


@pytest.mark.fault(
    "`model:desired` set to a tampered bundle, then to a path",
    expected="refused on every replica (a failed reload), the path ignored; the old bundle keeps "
    "serving",
)
def test_replicas_follow_model_desired(
    models_dir: Path, redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    settings = make_settings(
        redis_url, key_prefix, "good", models_dir=models_dir, ingest=False, model_poll_seconds=0.1
    )
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        assert _bundle(one) == _bundle(two) == "good"
        response = one.post(
            "/v1/admin/reload", json={"bundle": "next", "fleet": True}, headers=ADMIN
        )
        assert response.status_code == 200, response.text
        assert response.json()["fleet"] is True
        assert redis_client.get(f"{key_prefix}model:desired") == b"next"
        assert _bundle(one) == "next"
        wait_for("the other replica to follow", lambda: _bundle(two) == "next", 20)
        # A bundle that fails verification is refused everywhere; the old one keeps serving.
        redis_client.set(f"{key_prefix}model:desired", "bad")
        wait_for(
            "the refusal to be counted",
            lambda: 'furnace_model_reloads_total{outcome="failed"} 1.0' in two.get("/metrics").text,
            20,
        )
        assert _bundle(two) == "next"
        # A path in the key is not a bundle name: ignored, like the reload route refuses it.
        redis_client.set(f"{key_prefix}model:desired", str(models_dir / "good"))
        time.sleep(0.5)  # five polls
        assert _bundle(two) == "next"
        # A reload without `fleet` changes this replica only.
        assert (
            two.post("/v1/admin/reload", json={"bundle": "good"}, headers=ADMIN).status_code == 200
        )
        assert _bundle(two) == "good" and _bundle(one) == "next"


@pytest.mark.fault(
    "a window POSTed while the HTTP inference queue (FURNACE_HTTP_QUEUE) is full",
    expected="503 with Retry-After: 1, counted as `busy`; the streams' inference pool stays free",
)
def test_a_full_inference_queue_answers_503(
    bundle_dir: Path, redis_url: str, key_prefix: str, spec: WindowSpec
) -> None:
    settings = make_settings(
        redis_url, key_prefix, bundle_dir, ingest=False, http_queue=1, http_inference_workers=1
    )
    url = "/v1/furnaces/{}/windows"
    end = T0 + 600.0
    with TestClient(create_app(settings)) as client:
        rt = client.app.state.runtime  # type: ignore[attr-defined]
        gate = threading.Event()
        rt.http_executor.submit(gate.wait, 60)  # the only HTTP inference worker is busy
        # ... while the streams' inference pool stays free (HTTP load never holds it)
        assert rt.executor.submit(lambda: "free").result(timeout=10) == "free"
        first: list[httpx.Response] = []
        body = window_body(spec, end)

        def post_first() -> None:
            first.append(client.post(url.format("q1"), json=body, headers=WRITE))

        thread = threading.Thread(target=post_first)
        thread.start()
        try:
            wait_for("the first window to queue", lambda: rt.http_pending == 1, 20)
            second = client.post(url.format("q2"), json=body, headers=WRITE)
            assert second.status_code == 503, second.text
            assert second.headers["Retry-After"] == "1"
            assert "waiting for inference" in second.json()["detail"]
        finally:
            gate.set()
            thread.join(60)
        assert first[0].status_code == 200, first[0].text
        assert client.post(url.format("q3"), json=body, headers=WRITE).status_code == 200
        metrics = client.get("/metrics").text
        assert 'furnace_windows_rejected_total{reason="busy",source="http"} 1.0' in metrics
