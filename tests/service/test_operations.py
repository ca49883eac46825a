"""Issue 15: the metrics a runtime records from committed alert state, the phantom `other`
furnace, the OpenAPI page without internet, and `model:desired` said out loud at start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.alerting import AlertPolicy, AlertState, next_state
from service.detection import Detection
from service.main import create_app
from service.metrics import Metrics
from service.runtime import Runtime
from service.store import CommitResult
from tests.helpers.service import make_settings


def _samples(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    """(furnace, condition or modality) -> value of the samples of `name`."""
    body, _ = metrics.render()
    return {
        (s.labels["furnace"], s.labels.get("condition") or s.labels["modality"]): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
        if s.name == name
    }


def _det(furnace_id: str, end: float, condition: str, abnormal: bool) -> Detection:
    return Detection(
        furnace_id=furnace_id,
        window_end=end,
        condition=condition,
        probabilities={"normal": 0.5, condition: 0.5},
        score=0.9 if abnormal else 0.1,
        threshold=0.5,
        is_abnormal=abnormal,
        modalities=("current",),
        health={"current": "ok", "camera": "missing"},
    )


@pytest.fixture
def runtime(redis_url: str, key_prefix: str, bundle_dir: Path) -> Iterator[Runtime]:
    settings = make_settings(redis_url, key_prefix, bundle_dir, furnaces=["F01"])
    rt: Runtime = create_app(settings).state.runtime
    yield rt


def test_alert_active_is_zero_after_an_episode_that_changed_condition_closes(
    runtime: Runtime,
) -> None:
    # Issue 15 item 1: the episode opens as eruption, becomes overheating, closes; the
    # eruption series used to stay at 1 ("Furnaces in alert" read 2 with none open).
    policy = AlertPolicy(k=1, n=1, m=1)
    state = AlertState.initial("F01")
    kinds = []
    steps = [("eruption", True), ("overheating", True), ("overheating", True), ("normal", False)]
    for k, (condition, abnormal) in enumerate(steps):
        det = _det("F01", 1000.0 + 2 * k, condition, abnormal)
        state, events = next_state(state, det, policy)
        kinds += [e.kind for e in events]
        runtime.record(det, CommitResult(True, state, events), "redis")
    assert kinds == ["opened", "updated", "closed"]
    active = _samples(runtime.metrics, "furnace_alert_active")
    assert active and all(v == 0.0 for v in active.values()), active
    assert _samples(runtime.metrics, "furnace_alert_episodes_total")[("F01", "eruption")] == 1.0


@pytest.mark.fault(
    "a replica restarted while an episode is open in Redis",
    expected="furnace_alert_active is 1 from the first window after the restart",
)
def test_an_episode_open_in_redis_shows_after_a_restart(runtime: Runtime) -> None:
    # The first window after a restart carries the stored state: its open episode is active.
    state, _ = next_state(
        AlertState.initial("F01"), _det("F01", 10.0, "eruption", True), AlertPolicy(1, 1, 1)
    )
    det = _det("F01", 12.0, "eruption", True)
    runtime.record(det, CommitResult(False, state, []), "redis")
    assert _samples(runtime.metrics, "furnace_alert_active") == {("F01", "eruption"): 1.0}


@pytest.mark.fault(
    "windows scored before discovery registers the furnace; a window for an id known only over "
    "HTTP",
    expected="the furnace keeps its own label; the HTTP-only id gets no per-furnace health series",
)
def test_stream_windows_scored_before_discovery_keep_their_furnace_label(
    runtime: Runtime,
) -> None:
    # Issue 15 item 3: windows rebuilt from history at adoption come before discovery
    # registers the furnace; they were labelled `other`, whose health then never changed.
    runtime.record(_det("F07", 10.0, "normal", False), None, "redis")
    up = _samples(runtime.metrics, "furnace_modality_up")
    assert up == {("F07", "current"): 1.0, ("F07", "camera"): 0.0}
    runtime.record(_det("made-up", 10.0, "normal", False), None, "http")  # HTTP-only id
    assert {labels[0] for labels in _samples(runtime.metrics, "furnace_modality_up")} == {"F07"}


def test_docs_page_is_served_without_a_cdn(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(settings)) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text and "https://" not in page.text.split("<body>")[0]
        assert "/static/swagger-ui/swagger-ui-bundle.js" in page.text
        js = client.get("/static/swagger-ui/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 500_000
        assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
        spec = client.get("/openapi.json").json()
    assert {t["name"] for t in spec["tags"]} >= {"windows", "furnaces", "model", "operations"}
    post = spec["paths"]["/v1/furnaces/{furnace_id}/windows"]["post"]
    assert post["tags"] == ["windows"] and post["summary"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert examples and all(len(e["value"]["current"]["samples"]) == 32 for e in examples.values())
    assert "$ref" in str(post["requestBody"]["content"]["application/json"]["schema"])
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op.get("tags") and op.get("summary"), (method, path)


def test_model_desired_is_announced_at_start_and_exported(
    redis_url: str, key_prefix: str, bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 15 item 7: a key left in Redis silently replaced FURNACE_BUNDLE on every start.
    client = redis.Redis.from_url(redis_url)
    client.set(f"{key_prefix}model:desired", "some-other-bundle")
    client.close()
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, model_poll_seconds=0)
    caplog.set_level(logging.WARNING, logger="service.runtime")
    with TestClient(create_app(settings)) as http:
        body = http.get("/metrics").text
    assert "IGNORED (FURNACE_MODEL_POLL_SECONDS=0)" in caplog.text
    assert 'desired="some-other-bundle"' in body and 'origin="FURNACE_BUNDLE"' in body
    caplog.clear()
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, model_poll_seconds=60)
    with TestClient(create_app(settings)):
        pass
    assert "OVERRIDES FURNACE_BUNDLE" in caplog.text
