"""Per-furnace score adaptation (service/adaptation.py, docs/service.md "Per-furnace
adaptation"): the history's rule on hand cases, the manifest section, the engine scoring a
bundle with it (batched == one by one == the calibration's offline replay), and a service
restarted halfway through a furnace's stream deciding as an uninterrupted one (real Redis)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from furnace.alert_calibration import (
    CalibrationData,
    FurnaceRun,
    _compact,
    adapt,
    adaptation_reference,
)
from service.adaptation import AdaptationSpec, ScoreHistory, logit, sigmoid
from service.bundle import BundleError, read_manifest
from service.engine import Engine
from tests.helpers.memory import http_body, synthetic_windows
from tests.helpers.service import T0, dev_sign, make_settings, wait_for

SPEC = AdaptationSpec(
    window_seconds=20.0, quantile=0.25, min_windows=4, hop_seconds=2.0, reference={"current": 0.0}
)


def _feed(
    history: ScoreHistory, scores: list[float], fid: str = "f", m: str = "current"
) -> list[float]:
    return [history.adjust(m, [(fid, T0 + 2.0 * i, s)])[0] for i, s in enumerate(scores)]


def test_a_standing_bias_is_removed_and_a_typical_furnace_is_left_alone() -> None:
    """A furnace whose scores sit at logit 2 (reference 0) gets them lowered by 2 once it has
    `min_windows` of history; one at logit -1 is never changed; no score is ever raised."""
    biased = [sigmoid(2.0)] * 12
    got = _feed(ScoreHistory(SPEC), biased)
    assert got[:4] == biased[:4]  # fewer than 4 earlier windows: unchanged
    assert got[4:] == pytest.approx([sigmoid(0.0)] * 8)
    quiet = [sigmoid(-1.0)] * 12
    assert _feed(ScoreHistory(SPEC), quiet) == quiet
    rng = np.random.default_rng(0)
    mixed = [sigmoid(z) for z in rng.normal(0.0, 3.0, 200)]
    assert all(a <= s + 1e-12 for a, s in zip(_feed(ScoreHistory(SPEC), mixed), mixed, strict=True))


def test_the_shift_is_capped() -> None:
    """A furnace standing far above the reference is lowered by `max_shift` at the most."""
    capped = replace(SPEC, max_shift=1.5)
    got = _feed(ScoreHistory(capped), [sigmoid(5.0)] * 8)
    assert got[4:] == pytest.approx([sigmoid(3.5)] * 4)


def test_an_event_rising_above_the_furnace_baseline_still_stands_out() -> None:
    """Biased furnace (logit 2), then a condition (logit 6) for a while: its windows keep a
    lowered but high score until it fills more than 1 - quantile of the window; then the
    furnace's baseline has become the condition and it fades (an episode is open by then)."""
    scores = [sigmoid(2.0)] * 20 + [sigmoid(6.0)] * 10
    got = _feed(ScoreHistory(SPEC), scores)
    assert got[20] == pytest.approx(sigmoid(4.0))  # baseline 2 from the 10 earlier windows
    assert got[26] == pytest.approx(sigmoid(4.0))  # 6 of 10 windows high: q25 still 2
    assert got[29] == pytest.approx(sigmoid(2.0))  # 9 of 10 high: baseline 6, shift capped at 4


def test_a_batch_gives_what_one_by_one_gives_and_a_redelivery_rewrites_nothing() -> None:
    spec = replace(SPEC, reference={"current": -5.0})  # every baseline above it: shifts
    rng = np.random.default_rng(1)
    scores = [sigmoid(z) for z in rng.normal(1.0, 2.0, 40)]
    one = _feed(ScoreHistory(spec), scores)
    assert all(a < s for a, s in zip(one[4:], scores[4:], strict=True))
    batch = [("f", T0 + 2.0 * i, s) for i, s in enumerate(scores)]
    history = ScoreHistory(spec)
    assert history.adjust("current", batch[::-1])[::-1] == pytest.approx(one)
    history = ScoreHistory(spec)
    history.adjust("current", batch[:32])
    # window 30 posted again with a far lower score: the stored one stays, so window 31
    # reads the history it read before
    history.adjust("current", [("f", batch[30][1], 1e-6)])
    assert history.adjust("current", [batch[31]])[0] == pytest.approx(one[31])
    assert len(history.windows("f", "current")) <= spec.span + 1  # bounded
    assert history.adjust("camera", [("f", T0, 0.9)]) == [0.9]  # no reference: no adaptation


def test_prime_rebuilds_what_a_restart_lost() -> None:
    rng = np.random.default_rng(2)
    scores = [sigmoid(z) for z in rng.normal(1.5, 1.0, 30)]
    one = _feed(ScoreHistory(SPEC), scores)
    fresh = ScoreHistory(SPEC)
    records = [(T0 + 2.0 * i, {"current": s}) for i, s in enumerate(scores[:20])]
    records.append((T0 + 2.0 * 5, {"current": math.nan}))  # skipped
    assert not fresh.primed("f")
    assert fresh.prime("f", records) == 20 and fresh.primed("f")
    got = [fresh.adjust("current", [("f", T0 + 2.0 * i, scores[i])])[0] for i in range(20, 30)]
    assert got == pytest.approx(one[20:])
    fresh.reprime("f")
    assert not fresh.primed("f")


def test_logit_and_sigmoid_are_inverse_and_clip() -> None:
    for s in (1e-3, 0.3, 0.5, 0.97):
        assert sigmoid(logit(s)) == pytest.approx(s)
    assert math.isfinite(logit(0.0)) and math.isfinite(logit(1.0))
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0


# --------------------------------------------------------------------------- the bundle


def _with_adaptation(bundle: Path, dest: Path, section: dict[str, Any] | None) -> Path:
    shutil.copytree(bundle, dest)
    path = dest / "manifest.json"
    raw = json.loads(path.read_text())
    raw["adaptation"] = section
    path.write_text(json.dumps(raw, indent=2))
    dev_sign(dest)
    return dest


def _section(**over: Any) -> dict[str, Any]:
    section = {
        "window_seconds": 60.0,
        "quantile": 0.25,
        "min_windows": 5,
        "hop_seconds": 2.0,
        "reference": {"current": -6.0, "camera": -6.0},
        "max_shift_logits": 8.0,
    }
    return {**section, **over}


@pytest.fixture(scope="module")
def adapted_bundle(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service tests' bundle with an adaptation whose references sit far below any
    furnace's baseline: every window past the fifth is lowered."""
    return _with_adaptation(bundle_dir, tmp_path_factory.mktemp("adapt") / "b", _section())


def test_the_manifest_section_is_parsed_and_checked(bundle_dir: Path, tmp_path: Path) -> None:
    spec = read_manifest(_with_adaptation(bundle_dir, tmp_path / "ok", _section())).adaptation
    assert spec is not None and spec.span == 30 and spec.reference["camera"] == -6.0
    assert read_manifest(_with_adaptation(bundle_dir, tmp_path / "none", None)).adaptation is None
    bad = [
        (_section(hop_seconds=1.0), "hop_seconds"),
        (_section(quantile=1.5), "quantile"),
        (_section(min_windows=0), "min_windows"),
        (_section(window_seconds=-1.0), "window_seconds"),
        (_section(reference={"sound": 0.0}), "reference"),
        (_section(reference={"current": math.inf}), "current"),
        (_section(max_shift_logits=-1.0), "max_shift_logits"),
        ({k: v for k, v in _section().items() if k != "max_shift_logits"}, "max_shift_logits"),
    ]
    for i, (section, key) in enumerate(bad):
        with pytest.raises(BundleError, match=key):
            read_manifest(_with_adaptation(bundle_dir, tmp_path / f"bad{i}", section))


def test_the_engine_adapts_as_the_calibration_replays(adapted_bundle: Path) -> None:
    """One furnace's windows scored in batches and one by one give the same adapted scores,
    each below its raw score from the sixth window on (the raw one kept as `raw_score`), and
    the calibration's offline `adapt` of the raw results gives them too; the reference the
    calibration would take from them is the median of their baselines."""
    engine = Engine(adapted_bundle)
    spec = engine.manifest.window
    ends = [T0 + 100.0 + spec.hop_seconds * k for k in range(24)]
    windows = synthetic_windows(spec, "a1", ends, seed=3)
    batched = engine.score(windows, adapter=engine.new_adapter())
    adapter = engine.new_adapter()
    one = [engine.score([w], adapter=adapter)[0] for w in windows]
    for x, y in zip(batched, one, strict=True):
        for m in ("current", "camera"):
            assert x.per_modality[m].score == pytest.approx(y.per_modality[m].score, abs=1e-5)
    for k, d in enumerate(one):
        for r in d.per_modality.values():
            assert r.raw_score is not None
            assert (r.score < r.raw_score) if k >= 5 else (r.score == r.raw_score)
    assert engine.new_adapter() is not None and Engine(adapted_bundle).adapter is not None

    run = FurnaceRun("a1", "a1", 0.02, {"both": [_compact(d) for d in one]}, {"both": []})
    raw = CalibrationData(engine.manifest.thresholds, engine.manifest.class_names, [run], ("both",))
    offline = adapt(raw, engine.manifest.adaptation)
    for w, d in zip(offline.furnaces[0].windows["both"], one, strict=True):
        for m, r in w.results.items():
            assert r.score == pytest.approx(d.per_modality[m].score, abs=1e-12)
    none = adapt(raw, None)
    assert [w.results["current"].score for w in none.furnaces[0].windows["both"]] == [
        d.per_modality["current"].raw_score for d in one
    ]
    ref = adaptation_reference(raw, window_seconds=60.0, min_windows=5, hop_seconds=2.0)
    assert ref is not None and set(ref.reference) == {"current", "camera"}
    assert adaptation_reference(raw, min_windows=100, hop_seconds=2.0) is None  # too short


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_restarted_service_rebuilds_the_score_history(
    adapted_bundle: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    """Windows posted to one service, then the next ones to a new service (new engine, empty
    history) under the same prefix: their adapted scores equal those of a service that
    never restarted (another prefix), because the history is rebuilt from the stored
    detections' raw scores; a new service under an empty prefix does not lower them."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    spec = Engine(adapted_bundle).manifest.window
    ends = [T0 + 2000.0 + spec.hop_seconds * k for k in range(14)]
    bodies = [http_body(spec, end, seed=k) for k, end in enumerate(ends)]
    straight = make_settings(redis_url, f"{key_prefix}s:", adapted_bundle, ingest=False)
    restarted = make_settings(redis_url, f"{key_prefix}r:", adapted_bundle, ingest=False)
    empty = make_settings(redis_url, f"{key_prefix}e:", adapted_bundle, ingest=False)
    write = {"X-API-Key": "k1"}

    def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/v1/furnaces/r1/windows", json=body, headers=write)
        assert response.status_code == 200, response.text
        out: dict[str, Any] = response.json()
        return out

    with TestClient(create_app(straight)) as client:
        want = [post(client, b) for b in bodies]
    with TestClient(create_app(restarted)) as client:
        for b in bodies[:8]:
            post(client, b)
    with TestClient(create_app(restarted)) as client:
        got = [post(client, b) for b in bodies[8:]]
        metrics = client.get("/metrics").text
        info = client.get("/v1/model").json()
    with TestClient(create_app(empty)) as client:
        alone = post(client, bodies[-1])
    for x, y in zip(want[8:], got, strict=True):
        for m in ("current", "camera"):
            px, py = x["per_modality"][m], y["per_modality"][m]
            assert py["raw_score"] == pytest.approx(px["raw_score"], abs=1e-6)
            assert py["score"] == pytest.approx(px["score"], abs=1e-6)
            assert py["score"] < py["raw_score"]
    assert info["adaptation"]["reference"] == {"current": -6.0, "camera": -6.0}
    count = 'furnace_score_adaptation_shift_logits_count{modality="current"} 6.0'
    assert count in metrics  # one observation per window scored by that service
    for m in ("current", "camera"):
        r = alone["per_modality"][m]
        assert r["score"] == r["raw_score"]  # nothing stored under that prefix: no history
    wait_for("detections", lambda: redis_client.exists(f"{key_prefix}r:furnace:r1:detections"), 5)
