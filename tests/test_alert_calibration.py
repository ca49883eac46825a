"""`furnace calibrate-alerts` / `furnace.alert_calibration`: the search on hand-built cases
where the right policy is known, the shortcut replay against a full one, the decision rule
the engine and the calibrator share, the service and the scorecard taking the bundle's
policy (FURNACE_ALERT_* overriding it), and one end-to-end run on a tiny simulated dataset."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from furnace.alert_calibration import (
    CalibrationData,
    Candidate,
    FurnaceRun,
    Grid,
    WindowResult,
    _looser,
    alone_score_thresholds,
    base_thresholds,
    muted_modalities,
    replay_full,
    search,
)
from furnace.scorecard import TruthEvent
from service.bundle import BundleAlertPolicy, BundleError, Thresholds, read_manifest
from service.detection import ModalityResult
from service.engine import decide
from simulator.config import CLASS_NAMES
from tests.helpers.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
DEFAULT = REPO / "models" / "default"
NAMES = CLASS_NAMES
T0 = 1_767_225_600.0
THR = Thresholds(current=0.9, camera=0.8, fused=1.0, target_far=0.01, fusion="max_ratio")


def _result(score: float, top: int = 3) -> ModalityResult:
    """A modality's view with 1 - p(normal) = score, the rest on class `top`."""
    probs = [0.0] * len(NAMES)
    probs[0], probs[top] = 1.0 - score, score
    return ModalityResult(codes=[], probs=probs, score=score, segment_scores=[])


def _furnace(
    scores: dict[int, float],
    events: list[tuple[float, float]] = (),
    *,
    windows: int = 300,
    fid: str = "f0",
    settings: tuple[str, ...] = ("current_only",),
) -> FurnaceRun:
    """`windows` current windows every 2 s (score 0.1 unless `scores` says otherwise at that
    window index), eruption events (onset, end in seconds) fully visible."""
    ws = [
        WindowResult(T0 + 16.0 + 2.0 * i, ("current",), {"current": _result(scores.get(i, 0.1))})
        for i in range(windows)
    ]
    evs = [
        TruthEvent(fid, "eruption", T0 + a, T0 + b, visible_s=b - a, first_visible=T0 + a)
        for a, b in events
    ]
    return FurnaceRun(
        fid,
        fid,
        (windows * 2.0 + 14.0) / 3600.0,
        dict.fromkeys(settings, ws),
        dict.fromkeys(settings, evs),
    )


def _data(*runs: FurnaceRun, settings: tuple[str, ...] = ("current_only",)) -> CalibrationData:
    return CalibrationData(THR, NAMES, list(runs), settings=settings)


def _run(i0: int, length: int, score: float) -> dict[int, float]:
    return dict.fromkeys(range(i0, i0 + length), score)


# --------------------------------------------------------------------------- the search


@pytest.mark.parametrize("setting", ["current_only", "both"])
def test_k_of_n_suppresses_a_blip_and_the_event_still_alerts(setting: str) -> None:
    """A 3-window blip at ratio 1.06 opens a false episode under 3 of 4, not under 4 of 6;
    the event (30 windows far above) alerts under both: 4 of 6 is chosen although 3 of 4
    alerts as many events, sooner. (With both sensors no single-sensor setting prunes the
    search: the target is checked on the candidate itself.)"""
    scores = {**_run(50, 3, 0.955), **_run(150, 30, 0.999)}  # event 300..360 s: windows 142+
    data = _data(_furnace(scores, [(300.0, 360.0)], settings=(setting,)), settings=(setting,))
    grid = Grid(kn=((3, 4), (4, 6)), margin=(1.0,), fused=(1.0,))
    res = search(data, target_per_hour=0.1, grid=grid)
    assert res.met_target and res.note == ""
    assert (res.chosen.candidate.k, res.chosen.candidate.n) == (4, 6)
    o = res.chosen.settings[setting]
    assert (o.alerted, o.visible, o.false_episodes) == (1, 1, 0)
    # before calibration (3 of 4, factors 1) the blip is a false episode
    assert res.baseline.settings[setting].false_episodes == 1
    # a looser target accepts the blip, and 3 of 4 alerts sooner: it wins then
    res = search(data, target_per_hour=100.0, grid=grid)
    assert (res.chosen.candidate.k, res.chosen.candidate.n) == (3, 4)


def test_the_factor_removes_a_long_blip_and_the_loosest_such_factor_wins() -> None:
    """A 10-window blip at score 0.96 beats any k of n; alone factor 3 (single-sensor
    threshold 1 - 0.1 / 3 = 0.967) removes it, 2 (0.95) does not. A weak event at 0.975 is
    missed from factor 5 on (0.98): 3 is chosen (2 events, delays 30 and 20 s) over 5 and 10
    (only the strong event, delay 20 s: faster, but fewer events alerted). The in-ratio
    current threshold stays the base one: only the both-sensor setting uses it."""
    scores = {**_run(40, 10, 0.96), **_run(150, 20, 0.975), **_run(250, 20, 0.999)}
    events = [(290.0, 340.0), (500.0, 540.0)]
    data = _data(_furnace(scores, events))
    res = search(data, target_per_hour=0.1, grid=Grid(kn=((3, 4),), margin=(1, 2, 3, 5, 10)))
    c = res.chosen.candidate
    assert res.met_target and (c.current_alone, c.current) == (3, 1)
    assert res.chosen.settings["current_only"].alerted == 2
    assert res.chosen.settings["current_only"].delays == (30.0, 20.0)
    thr = Candidate(3, 4, current_alone=3).thresholds(THR)
    assert thr.current == 0.9 and thr.current_alone == pytest.approx((1 - 0.1 / 3) / 0.9)
    assert alone_score_thresholds(thr)["current"] == pytest.approx(1 - 0.1 / 3)
    # the in-ratio factor moves the ratio threshold, never the score a lone current must beat
    thr = Candidate(3, 4, current=5, current_alone=3).thresholds(THR)
    assert thr.current == pytest.approx(0.98) and thr.current_alone < 1.0
    assert alone_score_thresholds(thr)["current"] == pytest.approx(1 - 0.1 / 3)


def test_more_alerted_events_beat_a_looser_policy() -> None:
    """Abnormal every other window (5 of 10) never makes 3 of 4 but makes 3 of 6: the
    search takes (3, 6) for the event although (3, 4) comes first in the grid."""
    scores = dict.fromkeys(range(150, 170, 2), 0.999)
    data = _data(_furnace(scores, [(300.0, 340.0)]))
    res = search(data, target_per_hour=0.1, grid=Grid(kn=((3, 4), (3, 6)), margin=(1.0,)))
    assert (res.chosen.candidate.k, res.chosen.candidate.n) == (3, 6)
    assert res.chosen.settings["current_only"].alerted == 1


def test_every_setting_must_meet_the_target() -> None:
    """The current-only setting has no false episode under 3 of 4, but the camera-only one
    has a 3-window blip: the target holds per setting, so 4 of 6 is chosen."""
    cur = _furnace({**_run(150, 20, 0.999)}, [(300.0, 340.0)], settings=("current_only",))
    cam_windows = [
        WindowResult(
            T0 + 16.0 + 2.0 * i,
            ("camera",),
            {"camera": _result(0.85 if 50 <= i < 53 else 0.1)},  # ratio 1.06: a blip
        )
        for i in range(300)
    ]
    cur.windows["camera_only"] = cam_windows
    cur.events["camera_only"] = []
    data = _data(cur, settings=("current_only", "camera_only"))
    res = search(data, target_per_hour=0.1, grid=Grid(kn=((3, 4), (4, 6)), margin=(1.0,)))
    assert (res.chosen.candidate.k, res.chosen.candidate.n) == (4, 6)
    assert res.chosen.settings["camera_only"].false_episodes == 0


def test_a_candidate_that_mutes_a_sensor_is_never_taken() -> None:
    """Both sensors healthy; the current sees an event (score 0.999, ratio 1.11 at t 0.9),
    the camera blips (score 0.99). Camera factor 1.5 (t 0.867) and fused factor 1.15 would
    remove the blip, but the current could then never reach the fused threshold
    (1 / 0.9 < 1.15): the event is lost and the current silenced. That candidate is refused;
    the calibration says the target is not met instead of muting a sensor."""
    windows = []
    for i in range(300):
        cur = 0.999 if 150 <= i < 170 else 0.1
        cam = 0.99 if 50 <= i < 55 else 0.1
        both = {"current": _result(cur), "camera": _result(cam)}
        windows.append(WindowResult(T0 + 16.0 + 2.0 * i, ("current", "camera"), both))
    run = _furnace({}, [(300.0, 340.0)], settings=("both",))
    run.windows["both"] = windows
    data = _data(run, settings=("both",))
    grid = Grid(kn=((3, 4),), margin=(1.0, 1.5), fused=(1.0, 1.15))
    muted = Candidate(3, 4, current=1.0, camera=1.5, fused=1.15).thresholds(THR)
    assert muted_modalities(muted) == ("current",)
    res = search(data, target_per_hour=0.1, grid=grid)
    assert not muted_modalities(res.chosen.candidate.thresholds(THR))
    assert res.chosen.settings["both"].alerted == 1
    assert not res.met_target  # the blip stays a false episode without muting the current
    assert res.chosen.settings["both"].false_episodes == 1


def test_a_strict_camera_alone_keeps_the_camera_in_the_two_sensor_rule() -> None:
    """Camera-only setting: a long camera blip at 0.9 (ratio 1.125 over the base 0.8) that no
    k of n removes, and a semi-molten event at 0.85 that only the camera sees. Alone factor
    3 (the camera alone must beat 1 - 0.2 / 3 = 0.933) removes the blip and misses the event;
    1 keeps both: the target forces 3. Both-sensor setting: the event again at camera 0.85
    with current at 0.1 (ratio 0.85 / 0.8 = 1.06 > fused 1 while the camera's in-ratio
    threshold stays 0.8), and the blip while the current sensor is faulty (the camera decides
    alone, against the alone threshold). Coupled thresholds (one camera factor for both
    uses, the old parametrisation: in-ratio = alone) cannot have both: factor 3 silences the
    event with both sensors, 1 lets the blip through. Alone thresholds keep the event."""
    cam_scores = {**_run(40, 20, 0.9), **_run(150, 20, 0.85)}  # event 300..340 s
    event = [(300.0, 340.0)]
    runs = _furnace({}, event, settings=("both", "camera_only"))
    runs.windows["camera_only"] = [
        WindowResult(T0 + 16.0 + 2.0 * i, ("camera",), {"camera": _result(s, top=1)})
        for i, s in ((i, cam_scores.get(i, 0.1)) for i in range(300))
    ]
    runs.windows["both"] = [
        WindowResult(
            T0 + 16.0 + 2.0 * i,
            ("camera",) if 40 <= i < 60 else ("current", "camera"),  # current faulty
            {"current": _result(0.1), "camera": _result(cam_scores.get(i, 0.1), top=1)},
        )
        for i in range(300)
    ]
    settings = ("both", "camera_only")
    data = _data(runs, settings=settings)
    grid = Grid(kn=((3, 4),), margin=(1.0, 3.0), fused=(1.0,))
    res = search(data, target_per_hour=0.1, grid=grid)
    c = res.chosen.candidate
    assert res.met_target and (c.camera, c.camera_alone) == (1.0, 3.0)
    both, cam = res.chosen.settings["both"], res.chosen.settings["camera_only"]
    assert (both.alerted, both.false_episodes) == (1, 0)
    assert (cam.alerted, cam.false_episodes) == (0, 0)
    # coupled: one camera factor for the ratio and for the camera alone
    for f, alerted, false in ((1.0, 1, 1), (3.0, 0, 0)):
        coupled = Candidate(3, 4, camera=f, camera_alone=f)
        assert coupled.thresholds(THR).camera_alone == pytest.approx(1.0)  # the old rule
        o = replay_full(data, coupled, "both")
        assert (o.alerted, o.false_episodes) == (alerted, false), f
    assert (
        replay_full(
            data, Candidate(3, 4, camera=1.0, camera_alone=1.0), "camera_only"
        ).false_episodes
        == 1
    )


def test_no_candidate_meets_the_target_takes_the_fewest_false_episodes_and_says_so() -> None:
    """Two long blips (20 windows at 0.999, no event) survive every candidate; a short one
    (3 windows) only 3 of 4: the fallback picks a candidate with 2 false episodes. The alone
    factor is fixed per (k, n) (the fewest false episodes, then the loosest): one candidate
    per (k, n), both evaluated once nothing met the target."""
    scores = {**_run(20, 20, 0.999), **_run(100, 3, 0.999), **_run(200, 20, 0.999)}
    data = _data(_furnace(scores, []))
    res = search(data, target_per_hour=0.1, grid=Grid(kn=((3, 4), (4, 6)), margin=(1.0, 2.0)))
    assert not res.met_target and res.feasible == 0
    assert "no candidate meets 1 false episodes per 10 furnace-hours" in res.note
    assert res.chosen.false_episodes == 2 and res.chosen.candidate.n == 6
    assert res.evaluated == 2  # every (k, n) once nothing met the target
    assert res.chosen.candidate.current_alone == 1.0


def test_label_free_takes_the_loosest_policy_that_meets_the_target() -> None:
    """No events (site data): only false episodes count. A 3-window blip needs 4 of 6 or a
    factor of 2 (threshold 0.95 over the blip's 0.94): the thresholds stay as loose as
    possible first (a higher threshold can miss a condition, more hysteresis only delays)."""
    data = _data(_furnace(_run(50, 3, 0.94), []))
    res = search(data, target_per_hour=0.1, grid=Grid(kn=((3, 4), (4, 6)), margin=(1, 2, 5)))
    c = res.chosen.candidate
    assert res.met_target and (c.k, c.n, c.current_alone) == (4, 6, 1.0)
    assert res.chosen.settings["current_only"].alerted == 0
    # per (k, n) the loosest alone factor under the target: (3, 4) with 2, (4, 6) with 1
    assert res.feasible == 2
    assert {(e.candidate.n, e.candidate.current_alone) for e in res.ranked} == {(4, 2), (6, 1)}


def test_the_shortcut_replay_equals_a_full_replay() -> None:
    """Only windows near an abnormal one (under the loosest thresholds) are re-decided and
    replayed; the outcome must equal replaying every window, for any candidate."""
    from furnace.alert_calibration import _Setting

    rng = random.Random(5)
    runs = []
    for f in range(3):
        scores: dict[int, float] = {}
        for _ in range(8):
            i0, length = rng.randrange(400), rng.randrange(1, 12)
            scores.update(_run(i0, length, rng.choice([0.85, 0.93, 0.96, 0.99, 0.999])))
        events = [(300.0 + 200 * f, 400.0 + 200 * f)]
        runs.append(_furnace(scores, events, windows=420, fid=f"f{f}", settings=("both",)))
    # both sensors: the camera decides some windows alone, with its own scores
    for run in runs:
        ws = run.windows["both"]
        for j, w in enumerate(ws):
            hot = rng.random() < 0.04
            cam = _result(rng.choice([0.7, 0.82, 0.9]) if hot else 0.1, top=1)
            used = ("current", "camera") if j % 7 else ("camera",)
            ws[j] = WindowResult(w.window_end, used, {**w.results, "camera": cam})
    # the current alone too (camera unhealthy), with scores near the alone thresholds
    for run in runs:
        ws = run.windows["both"]
        for j in range(3, len(ws), 11):
            hot = rng.random() < 0.15
            cur = _result(rng.choice([0.93, 0.95, 0.97, 0.99]) if hot else 0.1)
            ws[j] = WindowResult(ws[j].window_end, ("current",), {"current": cur})
    data = _data(*runs, settings=("both",))
    grid = Grid()
    prune = _looser(Candidate(1, 1, 1).thresholds(THR))
    shortcut = _Setting(data, "both", prune, grid.reach)
    assert sum(map(len, shortcut.keep)) < 0.8 * sum(len(r.windows["both"]) for r in runs)
    for _ in range(40):
        kn = rng.choice(grid.kn)
        cand = Candidate(
            *kn,
            3,
            rng.choice(grid.margin),
            rng.choice(grid.margin),
            rng.choice(grid.fused_factors("max_ratio")),
            rng.choice(grid.margin),
            rng.choice(grid.margin),
        )
        assert shortcut.evaluate(cand) == replay_full(data, cand, "both"), cand


def test_the_loosest_candidate_flags_every_window_any_candidate_flags() -> None:
    """The pruning's premise under the alone parametrisation: an in-ratio factor raises t_m'
    and so lowers the alone ratio threshold s_m / t_m' (not monotone per manifest value), yet
    a window one modality decides is abnormal exactly when its score exceeds s_m; every window
    abnormal under some candidate of the grid is abnormal under the pruning thresholds,
    including scores on or next to a threshold."""
    grid = Grid()
    prune = _looser(Candidate(1, 1, 1).thresholds(THR))
    base_scores = [0.9, 0.8, 1 - 0.1 / 3, 1 - 0.2 / 3, 0.95, 0.96, 0.98, 0.99, 0.999]
    scores = sorted({x + d for x in base_scores for d in (-1e-12, 0.0, 1e-12)})
    windows = [
        WindowResult(0.0, used, {"current": _result(a), "camera": _result(b)})
        for a in scores
        for b in (*scores[::5], 0.1)
        for used in (("current",), ("camera",), ("current", "camera"))
    ]
    cands = [
        Candidate(3, 4, 3, fc, fcam, ff, fa, fb)
        for fc in grid.margin
        for fcam in grid.margin[::2]
        for ff in grid.fused_factors("max_ratio")[::2]
        for fa in grid.margin
        for fb in grid.margin[::2]
    ]
    for w in windows:
        if decide(w.results, w.used, prune, NAMES).is_abnormal:
            continue
        for cand in cands:
            assert not decide(w.results, w.used, cand.thresholds(THR), NAMES).is_abnormal, (
                w,
                cand,
            )


def test_the_grid_refuses_factors_below_one() -> None:
    with pytest.raises(ValueError, match="factors >= 1"):
        search(_data(_furnace({}, [])), grid=Grid(margin=(0.5, 1.0)))
    with pytest.raises(ValueError, match="k <= n"):
        search(_data(_furnace({}, [])), grid=Grid(kn=((5, 4),)))


# --------------------------------------------------------------------------- the rule


def test_decide_is_the_engines_rule_on_hand_cases() -> None:
    """max_ratio: the larger ratio against the fused threshold (both) or 1 (one); the
    condition falls back to the most probable abnormal class when normal still leads."""
    both = ("current", "camera")
    res = {"current": _result(0.2, top=5), "camera": _result(0.85, top=1)}
    d = decide(res, both, THR, NAMES)  # ratios 0.222 and 1.0625 > fused 1
    assert d.is_abnormal and d.lead == "camera" and d.score == pytest.approx(0.85 / 0.8)
    assert d.threshold == 1.0 and d.condition == "semi_molten"  # averaged: normal 0.475 leads
    assert d.probabilities["normal"] == pytest.approx(0.475)
    tight = Candidate(3, 4, fused=1.07).thresholds(THR)
    assert not decide(res, both, tight, NAMES).is_abnormal  # 1.0625 < 1.07
    one = decide(res, ("current",), THR, NAMES)
    assert not one.is_abnormal and one.condition == "normal" and one.threshold == 1.0
    # alone: the camera's ratio 1.0625 against camera_alone, both modalities untouched by it
    strict = replace(THR, camera_alone=1.1)
    cam = decide(res, ("camera",), strict, NAMES)
    assert not cam.is_abnormal and cam.threshold == 1.1 and cam.score == pytest.approx(0.85 / 0.8)
    assert decide(res, ("camera",), THR, NAMES).is_abnormal
    assert decide(res, both, strict, NAMES) == decide(res, both, THR, NAMES)
    none = decide(res, (), THR, NAMES)
    assert none.condition == "unknown" and math.isnan(none.score) and not none.is_abnormal
    avg = Thresholds(current=0.9, camera=0.8, fused=0.5, target_far=0.01, fusion="average")
    d = decide(res, both, avg, NAMES)  # 1 - p(normal) of the average: 0.525 > 0.5
    assert d.is_abnormal and d.lead == "" and d.score == pytest.approx(0.525)
    assert not decide(res, both, Candidate(3, 4, fused=2.0).thresholds(avg), NAMES).is_abnormal
    # averaged fusion: current and camera are only used alone, so the alone factors set them
    thr = Candidate(3, 4, camera_alone=2.0).thresholds(avg)
    assert thr.camera == pytest.approx(0.9) and thr.camera_alone == 1.0
    assert not decide(res, ("camera",), thr, NAMES).is_abnormal  # 0.85 < 0.9
    with pytest.raises(ValueError, match="alone factors"):
        Candidate(3, 4, camera=2.0).thresholds(avg)


# --------------------------------------------------------------------------- the bundle


def _with_policy(tmp_path: Path, policy: dict[str, object] | None) -> Path:
    from training.export.bundle import rewrite_manifest
    from training.export.signing import load_signing_key

    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.pop("alert_policy", None)  # as exported before alert policies existed
    if policy is not None:
        raw["alert_policy"] = policy
    key = load_signing_key(DEFAULT.parents[1] / "keys" / "dev-bundle.key")
    rewrite_manifest(folder, raw, signing_key=key)  # models/default is signed
    return folder


def test_the_bundle_policy_is_parsed_and_old_manifests_have_none(tmp_path: Path) -> None:
    assert read_manifest(_with_policy(tmp_path / "old", None)).alert_policy is None
    folder = _with_policy(tmp_path, {"k": 6, "n": 8, "m": 3, "measured": {}})
    assert read_manifest(folder).alert_policy == BundleAlertPolicy(6, 8, 3, None)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["alert_policy"] = {"k": 9, "n": 8, "m": 3}
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="must be <= n"):
        read_manifest(folder)


def test_the_service_and_the_scorecard_take_the_bundles_policy_unless_overridden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from furnace.scorecard import ServiceSettings, service_settings
    from service.alerting import AlertPolicy
    from service.engine import Engine
    from service.metrics import Metrics
    from service.runtime import Runtime
    from service.settings import Settings

    folder = _with_policy(tmp_path, {"k": 6, "n": 8, "m": 4})
    engine = Engine(folder)
    bundle = engine.manifest.alert_policy
    for key in ("K", "N", "M"):
        monkeypatch.delenv(f"FURNACE_ALERT_{key}", raising=False)
    settings = Settings(auth_disabled=True)
    rt = Runtime(settings=settings, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    rt.engine = engine
    assert rt.policy == AlertPolicy(6, 8, 4)
    assert settings.alert_policy(None) == AlertPolicy(3, 4, 3)  # a bundle without one
    monkeypatch.setenv("FURNACE_ALERT_K", "2")
    rt.settings = Settings(auth_disabled=True)
    assert rt.policy == AlertPolicy(2, 8, 4)  # per value: K from the environment
    monkeypatch.setenv("FURNACE_ALERT_K", "9")
    with pytest.raises(ValueError, match=r"k=9 \(FURNACE_ALERT_K\), n=8 \(the bundle\)"):
        Settings(auth_disabled=True).alert_policy(bundle)
    # the scorecard resolves through the same function
    _, chosen = service_settings(str(folder))
    assert chosen.alert_k == 9 and chosen.alert_n is None
    assert ServiceSettings(alert_k=5).policy(bundle) == AlertPolicy(5, 8, 4)
    assert ServiceSettings().policy(bundle) == AlertPolicy(6, 8, 4)
    assert ServiceSettings().policy(None) == AlertPolicy()
    rt.executor.shutdown()


def test_rewrite_manifest_refuses_a_changed_graph(tmp_path: Path) -> None:
    from training.export.bundle import rewrite_manifest

    folder = _with_policy(tmp_path, None)
    raw = json.loads((folder / "manifest.json").read_text())
    with (folder / "camera.onnx").open("ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="camera.onnx: missing or changed"):
        rewrite_manifest(folder, raw)


def test_export_calibrates_unless_told_not_to() -> None:
    from furnace.cli import build_parser

    args = build_parser().parse_args(["export", "--run", "r", "--out", "o"])
    assert not args.no_alert_calibration and args.target_false_per_10h == 1.0
    args = build_parser().parse_args(
        ["export", "--run", "r", "--out", "o", "--no-alert-calibration"]
    )
    assert args.no_alert_calibration


def test_calibrate_alerts_takes_several_datasets() -> None:
    from furnace.cli import build_parser

    args = build_parser().parse_args(["calibrate-alerts", "--bundle", "b"])
    assert args.data is None and args.furnaces is None
    args = build_parser().parse_args(
        ["calibrate-alerts", "--bundle", "b", "--data", "x", "--furnaces", "val"]
        + ["--data", "y", "--furnaces", "all"]
    )
    assert args.data == ["x", "y"] and args.furnaces == ["val", "all"]


def test_pooled_data_adds_furnace_hours() -> None:
    from furnace.alert_calibration import pool

    a = _data(_furnace(_run(50, 3, 0.999), [], fid="a"))
    b = _data(_furnace(_run(80, 3, 0.999), [], fid="b"))
    a.source, b.source = {"path": "A", "furnaces": ["a"]}, {"path": "B", "furnaces": ["b"]}
    both = pool([a, b])
    assert both.furnace_hours() == pytest.approx(a.furnace_hours() + b.furnace_hours())
    assert [f.furnace_id for f in both.furnaces] == ["a", "b"]
    assert both.source["path"] == "A, B" and both.source["furnaces"] == ["a", "b"]
    assert len(both.source["datasets"]) == 2
    # two blips, one per dataset: pooled, 3 of 4 makes 2 false episodes in both furnace-hours
    res = search(both, target_per_hour=100.0, grid=Grid(kn=((3, 4),), margin=(1.0,)))
    assert res.chosen.settings["current_only"].false_episodes == 2
    with pytest.raises(ValueError, match="other thresholds"):
        pool([a, CalibrationData(replace(THR, camera=0.5), NAMES, b.furnaces, b.settings)])


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 furnaces x 6 min (seed 3), two of them with an event."""
    from simulator.config import SimConfig
    from simulator.dataset import RunSpec, generate
    from training.data.fmf_write import write_fmf

    root = tmp_path_factory.mktemp("calibrate") / "data"
    cfg = SimConfig(minutes=6.0, event_free_fraction=0.34)
    write_fmf(generate(RunSpec(seed=3, furnaces=3, config=cfg)), root, progress=False)
    return root


@pytest.mark.heavy
def test_the_sources_resolve_val_all_and_ids_per_dataset(tiny_data: Path) -> None:
    from furnace.alert_calibration import resolve_sources

    recorded = {"path": str(tiny_data), "furnaces": {"val": ["s3f001"]}}
    ((path, names),) = resolve_sources(None, None, recorded)  # the run's validation furnaces
    assert path == tiny_data and names == ["sim-s3-f001-e00"]
    ((_, names),) = resolve_sources([str(tiny_data)], ["all"], {})
    assert names == [f"sim-s3-f00{i}-e00" for i in range(3)]
    pairs = resolve_sources([tiny_data, tiny_data], ["s3f000,s3f002", "val"], recorded)
    assert [n for _, n in pairs] == [["sim-s3-f000-e00", "sim-s3-f002-e00"], ["sim-s3-f001-e00"]]
    pairs = resolve_sources([tiny_data, tiny_data], ["all"], {})  # one spec for every dataset
    assert [len(n) for _, n in pairs] == [3, 3]
    with pytest.raises(ValueError, match="2 --furnaces for 1 --data"):
        resolve_sources([tiny_data], ["all", "val"], {})
    with pytest.raises(ValueError, match="no validation furnaces"):
        resolve_sources([tiny_data], None, {})
    with pytest.raises(ValueError, match="no training data"):
        resolve_sources(None, None, {})
    with pytest.raises(ValueError, match=r"no recording of furnaces \['s9f000'\]"):
        resolve_sources([tiny_data], ["s9f000"], {})


@pytest.mark.heavy
def test_calibrate_alerts_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    """`furnace calibrate-alerts` into a copy: the manifest gets the policy, the calibrated
    thresholds and the per-window ones, still verifies with the same model version, and the
    service runs the bundle's policy. No torch on the way."""
    from service.bundle import verify_bundle

    out = tmp_path / "calibrated"
    run, torch_loaded = run_cli(
        [
            "calibrate-alerts",
            "--bundle",
            str(DEFAULT),
            "--data",
            str(tiny_data),
            "--furnaces",
            "s3f000,s3f001,s3f002",
            "--target-false-per-10h",
            "1",
            "--out",
            str(out),
            "--signing-key",  # models/default is signed: the rewrite must be signed again
            str(DEFAULT.parents[1] / "keys" / "dev-bundle.key"),
        ]
    )
    assert run.returncode == 0, run.stderr
    assert not torch_loaded
    assert "| both | after |" in run.stdout and "alert policy: open on" in run.stdout
    assert "per-furnace adaptation: the 0.25 quantile of the last 600 s" in run.stdout
    before, after = verify_bundle(DEFAULT), verify_bundle(out)
    assert after.model_version == before.model_version and after.files == before.files
    assert after.adaptation is not None and set(after.adaptation.reference) == {"current", "camera"}
    raw = after.raw
    policy = raw["alert_policy"]
    assert after.alert_policy is not None
    assert (after.alert_policy.k, after.alert_policy.n) == (policy["k"], policy["n"])
    assert policy["target_false_episodes_per_hour"] == pytest.approx(0.1)
    assert policy["calibration_data"]["furnaces"] == ["s3f000", "s3f001", "s3f002"]
    assert policy["calibration_data"]["furnace_hours"] == pytest.approx(0.3)
    assert set(policy["measured"]) == {"both", "current_only", "camera_only"}
    per = raw["thresholds_per_window"]
    base = base_thresholds(before.raw, before.thresholds)  # models/default is calibrated too
    assert per["current"] == base.current and per["camera"] == base.camera
    c = Candidate(policy["k"], policy["n"], policy["m"], **policy["factors"])
    expected = c.thresholds(base)
    assert after.thresholds == expected
    if policy["met_target"]:
        assert all(m["false_episodes"] == 0 for m in policy["measured"].values())
    else:
        assert policy["note"] and "NOTE:" in run.stdout
    # recalibrating the calibrated copy starts from the per-window thresholds again
    assert base_thresholds(raw, after.thresholds) == base
    assert verify_bundle(DEFAULT).raw == before.raw  # --out left the source bundle alone
