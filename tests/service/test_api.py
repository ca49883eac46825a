"""The HTTP API on the real app: lifespan, a real bundle, a real Redis (docs/design/serving.md 5,
docs/design/style.md 6).

One app serves the module (its own key prefix; tests keep apart by furnace id); tests that
need other settings (a closed Redis port, bundles under a models folder) build their own.
Expected values come from the bundle's manifest, never from literals.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.bundle import Manifest
from service.main import create_app
from service.signing import parse_public_key, read_key_file
from service.types import WindowSpec
from tests.helpers.decisions import check_decision
from tests.helpers.service import (
    ADMIN,
    DEV_PUBLIC_KEY,
    T0,
    WRITE,
    free_port,
    make_settings,
    noise_frames,
    png_b64,
    tampered_copy,
    wait_for,
    window_body,
    with_thresholds,
)
from tests.service.test_metrics import SERIES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

END = T0 + 1000.0


def windows_url(furnace_id: str) -> str:
    return f"/v1/furnaces/{furnace_id}/windows"


@pytest.fixture(scope="module")
def client(redis_url: str, module_prefix: str, bundle_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(redis_url, module_prefix, bundle_dir, max_body_bytes=1_000_000)
    with TestClient(create_app(settings, group_start_id="0")) as test_client:
        yield test_client


def post(client: TestClient, furnace_id: str, body: Any, **kwargs: Any) -> httpx.Response:
    return client.post(windows_url(furnace_id), json=body, headers=WRITE, **kwargs)


def assert_detection(out: dict[str, Any], manifest: Manifest) -> None:
    names = list(manifest.class_names)
    assert list(out["probabilities"]) == names
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    check_decision(out, manifest.thresholds)
    assert out["condition"] in names
    assert out["model_version"] == manifest.model_version
    for modality in out["modalities"]:
        codes = out["codes"][modality]
        assert len(codes) == manifest.window.segments * manifest.codes_per_segment
        assert all(0 <= c < manifest.codebook_size for c in codes)
        assert len(out["segment_scores"][modality]) == manifest.window.segments
        assert list(out["per_modality"][modality]["probabilities"]) == names


# ------------------------------------------------------------------------ scoring


def test_a_window_of_both_modalities_is_scored(
    client: TestClient, manifest: Manifest, spec: WindowSpec
) -> None:
    response = post(client, "both1", window_body(spec, END))
    assert response.status_code == 200, response.text
    out = response.json()
    assert_detection(out, manifest)
    assert out["modalities"] == ["current", "camera"]
    assert out["decided_by"] == "both"
    assert out["health"] == {"current": "ok", "camera": "ok"}
    assert out["threshold"] == pytest.approx(manifest.thresholds.fused)
    assert set(out["codes"]) == {"current", "camera"}
    a, b = out["codes"]["current"], out["codes"]["camera"]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert out["code_agreement"] == pytest.approx(agreement)
    assert out["baseline"] == "history"
    assert out["state_applied"] is True
    assert out["window_end"] == END


@pytest.mark.parametrize(
    ("modality", "other"), [("current", "camera"), ("camera", "current")], ids=["current", "camera"]
)
@pytest.mark.fault(
    "a window with one modality absent (current only, camera only)",
    expected="200: the other decides alone against its own threshold; the absent one reads "
    "`missing`",
)
def test_one_modality_decides_alone(
    client: TestClient, manifest: Manifest, spec: WindowSpec, modality: str, other: str
) -> None:
    body = window_body(spec, END, current=modality == "current", camera=modality == "camera")
    response = post(client, f"alone-{modality}", body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert_detection(out, manifest)
    assert out["modalities"] == [modality]
    assert out["decided_by"] == modality
    assert out["health"] == {modality: "ok", other: "missing"}
    assert out["threshold"] == pytest.approx(manifest.thresholds.for_modalities((modality,)))
    assert list(out["codes"]) == [modality]
    assert out["code_agreement"] is None
    # Alone, the decision is that modality's own view.
    assert out["probabilities"] == pytest.approx(out["per_modality"][modality]["probabilities"])


def test_the_response_says_where_the_baseline_came_from(
    client: TestClient, spec: WindowSpec
) -> None:
    with_history = post(client, "base1", window_body(spec, END)).json()
    assert with_history["baseline"] == "history"
    bare = window_body(spec, END, camera=False, history=False)
    median = post(client, "base2", bare).json()
    assert median["baseline"] == "window_median"
    assert median["health"]["current"] == "ok"
    given = window_body(spec, END, camera=False, history=False, baseline_a=[12000.0] * 3)
    out = post(client, "base3", given).json()
    assert out["baseline"] == "given"
    assert out["decided_by"] == "current"


@pytest.mark.fault(
    "the same window POSTed twice (a client retry), then an older one",
    expected="each is scored; the state and the detections stream are written once",
)
def test_posting_a_window_twice_applies_it_once(
    client: TestClient, spec: WindowSpec, redis_client: redis.Redis, module_prefix: str
) -> None:
    body = window_body(spec, END, seed=3)
    first, second = post(client, "idem1", body).json(), post(client, "idem1", body).json()
    assert first["state_applied"] is True
    assert second["state_applied"] is False
    assert second["probabilities"] == first["probabilities"]  # scored all the same
    assert redis_client.xlen(f"{module_prefix}furnace:idem1:detections") == 1
    older = post(client, "idem1", window_body(spec, END - spec.hop_seconds)).json()
    assert older["state_applied"] is False
    assert redis_client.xlen(f"{module_prefix}furnace:idem1:detections") == 1


def _delay_count(client: TestClient) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name == "furnace_detection_delay_seconds_count"
    )


def test_posted_windows_stay_out_of_the_stream_delay_histogram(
    client: TestClient, spec: WindowSpec
) -> None:
    """The delay objective and its alert are about the stream path: a POSTed window (an
    archive, a retry) of any age must not move them (bench/http_isolation.py found it did)."""
    before = _delay_count(client)
    end = math.floor(time.time() / spec.hop_seconds) * spec.hop_seconds - spec.hop_seconds
    out = post(client, "delay1", window_body(spec, end, seed=5)).json()
    assert out["state_applied"] is True
    assert _delay_count(client) == before


@pytest.mark.fault(
    "a window whose only modality is stuck (the same three values throughout)",
    expected="200 with health `stuck`, decided_by `none`, condition `unknown`, not abnormal",
)
def test_a_window_without_a_usable_modality_decides_nothing(
    client: TestClient, spec: WindowSpec
) -> None:
    body = window_body(spec, END, camera=False)
    body["current"]["samples"] = [[11000.0, 12000.0, 13000.0]] * len(body["current"]["samples"])
    response = post(client, "none1", body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["health"] == {"current": "stuck", "camera": "missing"}
    assert out["modalities"] == [] and out["decided_by"] == "none"
    assert out["condition"] == "unknown"
    assert out["score"] is None and out["threshold"] is None and not out["is_abnormal"]
    assert out["state_applied"] is True
    assert list(out["codes"]) == ["current"]  # scored, but not used for the decision


# ------------------------------------------------------------------------ auth


@pytest.mark.fault(
    "POST a window without X-API-Key",
    expected="401 with WWW-Authenticate",
)
def test_a_missing_key_is_401_with_a_challenge(client: TestClient, spec: WindowSpec) -> None:
    response = client.post(windows_url("auth1"), json=window_body(spec, END))
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


@pytest.mark.fault(
    "POST a window with a wrong X-API-Key",
    expected="403",
)
def test_a_wrong_key_is_403(client: TestClient, spec: WindowSpec) -> None:
    headers = {"X-API-Key": "not-a-key"}
    response = client.post(windows_url("auth2"), json=window_body(spec, END), headers=headers)
    assert response.status_code == 403


@pytest.mark.fault(
    "an X-API-Key of non-ASCII bytes (latin-1, UTF-8)",
    expected="403, never a 500",
)
def test_a_non_ascii_key_is_403_not_500(client: TestClient, spec: WindowSpec) -> None:
    # Header values travel as latin-1; compare_digest on a non-ASCII str would raise.
    for raw in ("k\u00e9y".encode("latin-1"), "\u043a\u043b\u044e\u0447".encode()):
        headers = {"X-API-Key": raw}
        response = client.post(windows_url("auth3"), json=window_body(spec, END), headers=headers)
        assert response.status_code == 403, response.text


@pytest.mark.fault(
    "POST /v1/admin/reload without a key, then with a write key",
    expected="401, then 403",
)
def test_admin_routes_need_the_admin_key(client: TestClient) -> None:
    body = {"bundle": "default"}
    assert client.post("/v1/admin/reload", json=body).status_code == 401
    assert client.post("/v1/admin/reload", json=body, headers=WRITE).status_code == 403


def test_the_admin_key_is_accepted_on_write_routes(client: TestClient, spec: WindowSpec) -> None:
    response = client.post(windows_url("auth4"), json=window_body(spec, END), headers=ADMIN)
    assert response.status_code == 200


def test_health_probes_and_metrics_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)


# ------------------------------------------------------------------------ input limits


@pytest.mark.fault(
    "a 1.4 MB JSON body over FURNACE_MAX_BODY_BYTES (1 MB here)",
    expected="413",
)
def test_an_oversized_body_is_413(client: TestClient) -> None:
    junk = b'{"current": {"start": 1, "samples": [' + b"[1.0, 2.0, 3.0], " * 80_000 + b"]}}"
    response = client.post(
        windows_url("big1"), content=junk, headers={**WRITE, "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def _bad_bodies(spec: WindowSpec) -> dict[str, tuple[str | dict[str, Any], str]]:
    """name -> (body, a fragment the 422 message must contain). Strings are sent raw."""
    good = window_body(spec, END)
    frames = good["camera"]["frames"]

    def with_current(**changes: Any) -> dict[str, Any]:
        return {**good, "current": {**good["current"], **changes}}

    def with_frames(new: list[dict[str, Any]]) -> dict[str, Any]:
        return {**good, "camera": {"frames": new}}

    marked = with_current(samples=[[123456.5, 1.0, 2.0], *good["current"]["samples"][1:]])
    raw = json.dumps(marked)
    two_phases = [s[:2] for s in good["current"]["samples"]]
    bad_png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).decode()
    swapped = [frames[1], frames[0], *frames[2:]]
    many = [
        {"ts": END - 1.0 + i * 1e-3, "image": png_b64(f)}
        for i, f in enumerate(noise_frames(65, 8))  # small images: the body stays small
    ]
    return {
        "two-phases": (with_current(samples=two_phases), "samples"),
        "too-few-samples": (
            with_current(samples=good["current"]["samples"][: spec.samples - 1]),
            "at least",
        ),
        "nan": (raw.replace("123456.5", "NaN"), "finite"),
        "infinity": (raw.replace("123456.5", "Infinity"), "finite"),
        "minus-infinity": (raw.replace("123456.5", "-Infinity"), "finite"),
        "undecodable-image": (
            with_frames([{**frames[0], "image": bad_png}, *frames[1:]]),
            "frames[0]",
        ),
        "not-base64": (with_frames([{**frames[0], "image": "@@@@not base64@@@@"}]), "base64"),
        "frames-out-of-order": (with_frames(swapped), "increase"),
        "too-many-frames": (with_frames(many), "at most"),
        "rate-mismatch": (with_current(rate_hz=spec.rate_hz * 2), "rate_hz"),
        "implausible-start": (with_current(start=5.0), "plausible"),
        "implausible-frame-time": (
            with_frames([{**frames[0], "ts": 12.0}, *frames[1:]]),
            "plausible",
        ),
        "far-future": (
            {**good, "window_end": END + 10 * 365 * 86400.0},
            "in the future",
        ),
        "unknown-field": ({**good, "colour": "red"}, "colour"),
        "unknown-nested-field": (with_current(phase_d=[1.0]), "phase_d"),
        "no-modality": ({"window_end": END}, "neither"),
        "not-json": ("{this is not json", "json"),
    }


BAD = sorted(_bad_bodies(WindowSpec()))


@pytest.mark.parametrize("name", BAD)
@pytest.mark.fault(
    "a malformed window: {name}",
    expected="422 whose message names the problem; validation errors carry type, loc and msg only "
    "(the input is not echoed)",
)
def test_bad_windows_are_422_with_a_readable_message(
    client: TestClient, spec: WindowSpec, name: str
) -> None:
    body, fragment = _bad_bodies(spec)[name]
    if isinstance(body, str):
        response = client.post(
            windows_url("bad1"),
            content=body.encode(),
            headers={**WRITE, "Content-Type": "application/json"},
        )
    else:
        response = post(client, "bad1", body)
    assert response.status_code == 422, (name, response.status_code, response.text[:500])
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    assert fragment.lower() in text.lower(), text
    if isinstance(detail, list):  # validation errors: type, loc and msg only (no echo)
        assert all(set(e) == {"type", "loc", "msg"} for e in detail)
        assert "123456" not in response.text


@pytest.mark.fault(
    "furnace ids with a leading dash, 65 characters, `:`, `*` or non-ASCII",
    expected="422 on POST windows and on GET state",
)
def test_an_invalid_furnace_id_is_422(client: TestClient, spec: WindowSpec) -> None:
    for furnace_id in ("-lead", "a" * 65, "x%3Ay", "x*y", "caf\u00e9"):
        response = post(client, furnace_id, window_body(spec, END))
        assert response.status_code == 422, furnace_id
        response = client.get(f"/v1/furnaces/{furnace_id}/state")
        assert response.status_code == 422, furnace_id


@pytest.mark.fault(
    "a POSTed window with a NaN sample",
    expected="rejected and counted in furnace_windows_rejected_total{source=http, "
    "reason=nonfinite}",
)
def test_rejections_are_counted_by_reason(client: TestClient) -> None:
    samples = {
        (s.labels["source"], s.labels["reason"]): s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name == "furnace_windows_rejected_total"
    }
    raw = '{"current": {"start": 1.7e9, "samples": [[NaN, 1, 2]]}}'
    client.post(
        windows_url("rej1"), content=raw, headers={**WRITE, "Content-Type": "application/json"}
    )
    after = {
        (s.labels["source"], s.labels["reason"]): s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name == "furnace_windows_rejected_total"
    }
    assert after[("http", "nonfinite")] == samples.get(("http", "nonfinite"), 0.0) + 1


# ------------------------------------------------------------------------ reads


def test_state_is_404_before_any_detection_then_the_latest(
    client: TestClient, spec: WindowSpec
) -> None:
    assert client.get("/v1/furnaces/st1/state").status_code == 404
    post(client, "st1", window_body(spec, END - spec.hop_seconds))
    latest = post(client, "st1", window_body(spec, END, seed=1)).json()
    response = client.get("/v1/furnaces/st1/state")
    assert response.status_code == 200
    state = response.json()
    assert state["furnace_id"] == "st1"
    assert state["last_window_end"] == END
    assert state["detection"]["window_end"] == END
    assert state["detection"]["probabilities"] == pytest.approx(latest["probabilities"])
    assert state["health"] == {"current": "ok", "camera": "ok"}
    assert state["episode"] is None or state["episode"]["condition"]


def test_furnaces_lists_every_furnace_with_detections(client: TestClient, spec: WindowSpec) -> None:
    post(client, "list1", window_body(spec, END))
    furnaces = {f["furnace_id"]: f for f in client.get("/v1/furnaces").json()["furnaces"]}
    assert furnaces["list1"]["last_window_end"] == END
    assert furnaces["list1"]["health"] == {"current": "ok", "camera": "ok"}


@pytest.mark.fault(
    "a furnace whose data stops (last commit older than FURNACE_NO_DATA_SECONDS)",
    expected="both read routes report every modality `no_data`; `ok` again when data returns",
)
def test_health_reads_no_data_once_the_last_window_is_older_than_no_data_seconds(
    redis_url: str,
    key_prefix: str,
    bundle_dir: Path,
    redis_client: redis.Redis,
    spec: WindowSpec,
) -> None:
    """A furnace whose data stopped does not read "ok" forever (issue 15 item 2): both read
    routes report every modality `no_data` once its last window was committed (the state
    hash's `updated_at`, wall clock) more than FURNACE_NO_DATA_SECONDS ago, and "ok" again
    when a new window comes. The commit time is moved back instead of waiting."""
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, no_data_seconds=10.0)
    state_key = f"{key_prefix}furnace:nd1:state"
    ok = {"current": "ok", "camera": "ok"}
    no_data = {"current": "no_data", "camera": "no_data"}
    with TestClient(create_app(settings)) as client:

        def reported() -> tuple[dict[str, str], dict[str, str]]:
            state = client.get("/v1/furnaces/nd1/state").json()
            listed = {f["furnace_id"]: f for f in client.get("/v1/furnaces").json()["furnaces"]}
            return state["health"], listed["nd1"]["health"]

        assert post(client, "nd1", window_body(spec, END)).status_code == 200
        assert reported() == (ok, ok)
        redis_client.hset(state_key, "updated_at", repr(time.time() - 5.0))
        assert reported() == (ok, ok)  # 5 s old: within FURNACE_NO_DATA_SECONDS
        redis_client.hset(state_key, "updated_at", repr(time.time() - 15.0))
        assert reported() == (no_data, no_data)  # 15 s: ok under the default 30 s, not 10 s
        state = client.get("/v1/furnaces/nd1/state").json()
        assert state["detection"]["health"] == ok  # the last detection itself is unchanged
        assert state["last_window_end"] == END
        assert post(client, "nd1", window_body(spec, END + spec.hop_seconds)).status_code == 200
        assert reported() == (ok, ok)  # data again


def test_model_names_the_bundle_its_signer_and_model_desired(
    redis_url: str,
    key_prefix: str,
    bundle_dir: Path,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """`bundle` (folder name), `signed_by` (the trusted key id that verified the manifest;
    null for an unsigned bundle served under FURNACE_ALLOW_UNSIGNED_BUNDLES) and `desired`
    (the `model:desired` key, read live; null when unset)."""
    dev_key_id, _ = parse_public_key(read_key_file(DEV_PUBLIC_KEY)[0])
    signature = json.loads((bundle_dir / "signature.json").read_text())
    # FURNACE_MODEL_POLL_SECONDS=0: the key is reported, not followed
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False, model_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        out = client.get("/v1/model").json()
        assert out["bundle"] == bundle_dir.name
        assert out["signed_by"] == signature["key_id"] == dev_key_id
        assert out["desired"] is None
        redis_client.set(f"{key_prefix}model:desired", "next-bundle")
        out = client.get("/v1/model").json()
        assert out["desired"] == "next-bundle"
        assert out["bundle"] == bundle_dir.name
        schema = client.get("/openapi.json").json()["components"]["schemas"]["ModelOut"]
        assert {"bundle", "signed_by", "desired"} <= set(schema["required"])
    unsigned = shutil.copytree(bundle_dir, tmp_path / "unsigned")
    (unsigned / "signature.json").unlink()
    settings = make_settings(
        redis_url, key_prefix, unsigned, ingest=False, allow_unsigned_bundles=True
    )
    with TestClient(create_app(settings)) as client:
        out = client.get("/v1/model").json()
        assert out["bundle"] == "unsigned"
        assert out["signed_by"] is None


def test_model_describes_the_served_bundle(client: TestClient, manifest: Manifest) -> None:
    out = client.get("/v1/model").json()
    assert out["model_version"] == manifest.model_version
    assert out["class_names"] == list(manifest.class_names)
    assert out["codebook_size"] == manifest.codebook_size
    assert out["window"]["window_seconds"] == manifest.window.window_seconds
    assert out["thresholds"]["fused"] == pytest.approx(manifest.thresholds.fused)
    assert len(out["bundle_sha256"]) == 64


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = wait_for("/readyz 200", lambda: client.get("/readyz").status_code == 200, 20)
    assert ready
    body = client.get("/readyz").json()
    assert body["ready"] is True and body["failing"] == []


@pytest.mark.fault(
    "the service started with nothing listening at FURNACE_REDIS_URL",
    expected="/readyz 503 naming redis, /healthz 200, POST windows 503 with Retry-After",
)
def test_readyz_is_503_with_the_failing_checks_when_redis_is_down(
    bundle_dir: Path, key_prefix: str, spec: WindowSpec
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(closed, key_prefix, bundle_dir)
    with TestClient(create_app(settings)) as down:
        response = down.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False
        assert "redis" in body["failing"]
        assert body["checks"]["redis"] is False
        assert down.get("/healthz").status_code == 200  # alive, just not ready
        # Scoring still works; only the state store is missing: 503 with Retry-After.
        response = down.post(windows_url("down1"), json=window_body(spec, END), headers=WRITE)
        assert response.status_code == 503
        assert "Retry-After" in response.headers


@pytest.mark.fault(
    "requests before startup has loaded the model and connected Redis",
    expected="503 with a JSON detail and Retry-After on every route, never a 500; /readyz lists "
    "model and redis",
)
def test_routes_answer_503_until_the_model_and_redis_are_there(
    bundle_dir: Path, key_prefix: str, redis_url: str, spec: WindowSpec
) -> None:
    """Without the lifespan (no engine, no Redis client yet) the routes that need them say so
    with 503, a JSON detail and Retry-After, never a 500."""
    bare = TestClient(create_app(make_settings(redis_url, key_prefix, bundle_dir)))
    for response, missing in [
        (bare.get("/v1/model"), "no model loaded"),
        (bare.post(windows_url("nr1"), json=window_body(spec, END), headers=WRITE), "no model"),
        (bare.get("/v1/furnaces"), "Redis"),
        (bare.get("/v1/furnaces/nr1/state"), "Redis"),
    ]:
        assert response.status_code == 503, response.text
        assert missing in response.json()["detail"] and "Retry-After" in response.headers
    response = bare.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["model", "redis"]
    assert bare.get("/healthz").json() == {"status": "ok"}


def test_metrics_expose_the_serving_series_after_scoring(
    client: TestClient, spec: WindowSpec
) -> None:
    post(client, "met1", window_body(spec, END))
    client.post(
        windows_url("met1"), content=b"{", headers={**WRITE, "Content-Type": "application/json"}
    )
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # Series that need a stream, an alert or a dead letter come from the stream tests.
    needs_streams = {
        "furnace_stream_lag_entries",
        "furnace_stream_pending_entries",
        "furnace_dead_letters",
        "furnace_entries_late",
        "furnace_alert_episodes",
        "furnace_alert_active",
        "furnace_modality_up",
        # per-furnace series: an id known only over HTTP has none (it shares `other`)
        "furnace_last_window_timestamp_seconds",
        "furnace_window_score",
        "furnace_window_threshold",
        "furnace_code_usage_drift",
    }
    for name, (kind, labels) in SERIES.items():
        if name in needs_streams:
            continue
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    scored = {
        tuple(sorted(s.labels.items())): s.value
        for s in families["furnace_windows_scored"].samples
        if s.name.endswith("_total")
    }
    assert scored[(("modalities", "both"), ("source", "http"))] >= 1
    routes = {s.labels["route"] for s in families["furnace_http_request_duration_seconds"].samples}
    assert "/v1/furnaces/{furnace_id}/windows" in routes
    assert not any("met1" in r for r in routes)


# ------------------------------------------------------------------------ alert episodes


def test_an_episode_opens_after_k_abnormal_windows_and_state_shows_it(
    bundle_dir: Path, redis_url: str, key_prefix: str, tmp_path: Path, spec: WindowSpec
) -> None:
    flag_all = with_thresholds(bundle_dir, tmp_path / "flag-all", 0.0)
    settings = make_settings(redis_url, key_prefix, flag_all, alert_k=2, alert_n=3, alert_m=2)
    with TestClient(create_app(settings)) as flagging:
        ends = [END + i * spec.hop_seconds for i in range(3)]
        outs = [
            post(flagging, "ep1", window_body(spec, end, seed=i)).json()
            for i, end in enumerate(ends)
        ]
        assert all(o["is_abnormal"] for o in outs)
        assert outs[0]["episode"] is None
        assert outs[1]["episode"]["opened_at"] == ends[1]
        assert outs[1]["episode"]["condition"] != "normal"
        state = flagging.get("/v1/furnaces/ep1/state").json()
        assert state["episode"]["id"] == outs[1]["episode"]["id"]
        listed = {f["furnace_id"]: f for f in flagging.get("/v1/furnaces").json()["furnaces"]}
        assert listed["ep1"]["episode"]["id"] == outs[1]["episode"]["id"]
        opened = [
            s.value
            for f in text_string_to_metric_families(flagging.get("/metrics").text)
            for s in f.samples
            if s.name == "furnace_alert_episodes_total"
        ]
        assert sum(opened) == 1


# ------------------------------------------------------------------------ reload


@pytest.fixture
def models_dir(bundle_dir: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(bundle_dir, root / "good")
    tampered_copy(bundle_dir, root / "bad", "current.onnx")
    return root


@pytest.fixture
def reloading(models_dir: Path, redis_url: str, key_prefix: str) -> Iterator[TestClient]:
    settings = make_settings(redis_url, key_prefix, "good", models_dir=models_dir)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_reload_by_name_swaps_in_the_bundle(reloading: TestClient, manifest: Manifest) -> None:
    response = reloading.post("/v1/admin/reload", json={"bundle": "good"}, headers=ADMIN)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["model_version"] == manifest.model_version
    assert out["previous"] == manifest.model_version
    metrics = reloading.get("/metrics").text
    assert 'furnace_model_reloads_total{outcome="ok"} 1.0' in metrics


@pytest.mark.fault(
    "POST /v1/admin/reload of a bundle with a changed current.onnx, of an unknown name and of "
    "`../good`",
    expected="4xx naming the file and its sha256 (422 for the names); the old model keeps serving",
)
def test_a_tampered_bundle_is_refused_and_the_old_one_keeps_serving(
    reloading: TestClient, manifest: Manifest, spec: WindowSpec
) -> None:
    before = reloading.get("/v1/model").json()
    response = reloading.post("/v1/admin/reload", json={"bundle": "bad"}, headers=ADMIN)
    assert 400 <= response.status_code < 500
    assert "current.onnx" in response.json()["detail"]
    assert "sha256" in response.json()["detail"]
    after = reloading.get("/v1/model").json()
    assert after["bundle_sha256"] == before["bundle_sha256"]
    assert after["model_version"] == manifest.model_version
    scored = reloading.post(windows_url("rl1"), json=window_body(spec, END), headers=WRITE)
    assert scored.status_code == 200
    assert 'furnace_model_reloads_total{outcome="failed"} 1.0' in reloading.get("/metrics").text
    missing = reloading.post("/v1/admin/reload", json={"bundle": "nope"}, headers=ADMIN)
    assert missing.status_code == 422
    traversal = reloading.post("/v1/admin/reload", json={"bundle": "../good"}, headers=ADMIN)
    assert traversal.status_code == 422


@pytest.mark.fault(
    "two admin reloads at the same moment",
    expected="one 200, the other 409",
)
def test_concurrent_reloads_get_409(reloading: TestClient) -> None:
    statuses: list[int] = []

    def reload(barrier: threading.Barrier, out: list[int]) -> None:
        barrier.wait()
        response = reloading.post("/v1/admin/reload", json={"bundle": "good"}, headers=ADMIN)
        out.append(response.status_code)

    for _attempt in range(5):  # the two must overlap; a reload takes a good fraction of a second
        barrier, statuses = threading.Barrier(2), []
        threads = [threading.Thread(target=reload, args=(barrier, statuses)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if 409 in statuses:
            break
    assert sorted(statuses) == [200, 409]


@pytest.mark.fault(
    'JSON bodies that are no window: `[]`, `null`, `"x"`, `1e999`, null modalities',
    expected="422",
)
def test_no_route_answers_500_to_junk(client: TestClient) -> None:
    for body in ("[]", "null", '"x"', "1e999", '{"current": null, "camera": null}'):
        response = client.post(
            windows_url("junk1"),
            content=body.encode(),
            headers={**WRITE, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, (body, response.text)
    assert math.isfinite(float(client.get("/healthz").elapsed.total_seconds()))


@pytest.mark.fault(
    "every request of the test module, junk included",
    expected="no 5xx answer (furnace_http_request_duration_seconds)",
)
def test_no_request_of_this_module_was_answered_5xx(client: TestClient) -> None:
    """Runs last: every request the module's app served (junk included) got an answer < 500."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    served = [
        (s.labels["route"], s.labels["status_class"], s.value)
        for f in families
        for s in f.samples
        if s.name == "furnace_http_request_duration_seconds_count"
    ]
    assert sum(n for _, _, n in served) > 0
    assert [(r, c) for r, c, n in served if c == "5xx" and n] == []
