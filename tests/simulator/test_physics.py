"""Current synthesis, labels, determinism and faults of the simulator."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from simulator.config import (
    CAMERA_HEALTH,
    CLASS_INDEX,
    CLIP_A,
    CURRENT_HEALTH,
    SimConfig,
)
from simulator.dataset import RunSpec, generate
from simulator.faults import apply_faults
from simulator.physics import shaped_noise
from simulator.stats import compare_with_log
from simulator.types import Episode, FaultEvent
from training.evaluation.report_sim import ACCEPTANCE, current_figures


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _one(condition: str | None, seed: int, *, render: bool = False, **kw: object) -> Episode:
    cfg = SimConfig(
        minutes=20.0,
        event_free_fraction=0.0 if condition else 1.0,
        max_events=1,
        condition=condition,
        faults=False,
        **kw,  # type: ignore[arg-type]
    )
    return next(iter(generate(RunSpec(seed=seed, furnaces=1, config=cfg), render=render)))


def test_statistics_match_the_production_log() -> None:
    figures = current_figures(seed=0)
    failed = [r for r in compare_with_log(figures) if not r["pass"]]
    assert not failed, failed
    for key, label, lo, hi in ACCEPTANCE:
        assert lo <= figures[key] <= hi, (label, figures[key])


def test_shaped_noise_has_the_log_spectrum() -> None:
    x = shaped_noise(2**14, np.random.default_rng(0))
    assert abs(x.mean()) < 1e-9 and abs(x.std() - 1.0) < 1e-9
    lag1 = float(np.mean(x[1:] * x[:-1]))
    assert 0.7 < lag1 < 0.9


def test_same_seed_same_bytes_and_renderer_does_not_move_currents() -> None:
    spec = RunSpec(seed=3, furnaces=2, config=SimConfig(minutes=5.0, event_free_fraction=0.0))
    a = list(generate(spec))
    b = list(generate(spec))
    for x, y in zip(a, b, strict=True):
        assert _sha(x.current, x.frames, x.mask, x.label_cur) == _sha(
            y.current, y.frames, y.mask, y.label_cur
        )
    no_camera = list(generate(spec, render=False))
    for x, y in zip(a, no_camera, strict=True):
        assert _sha(x.current, x.label_cur) == _sha(y.current, y.label_cur)
    other = list(generate(replace(spec, seed=4)))
    assert _sha(a[0].current) != _sha(other[0].current)
    assert _sha(a[0].frames) != _sha(other[0].frames)


def test_labels_agree_between_modalities() -> None:
    for fps in (2.0, 5.0):
        ep = _one("overheating", seed=11, render=False, camera_fps=fps)
        # Frame times that coincide with a current sample carry the same label.
        idx = np.flatnonzero(np.isclose(ep.t_frame * 2.0, np.round(ep.t_frame * 2.0)))
        cur_idx = np.round(ep.t_frame[idx] * 2.0).astype(int)
        assert np.array_equal(ep.label_frame[idx], ep.label_cur[cur_idx])
        assert (ep.label_cur == CLASS_INDEX["overheating"]).sum() > 100


def test_electrode_breakage_signature() -> None:
    ep = _one("electrode_breakage", seed=5)
    ev = ep.events[0]
    phase = ev["params"]["phase"]
    active = (ep.t_cur >= ev["onset_s"] + 1.0) & (ep.t_cur < ev["end_s"])
    level = ep.setpoint[active, phase]
    lost = ep.current[active, phase]
    assert np.median(lost / level) < 0.10  # one phase below 10 %
    others = [q for q in range(3) if q != phase]
    a, b = ep.current[active][:, others].T
    assert np.all(np.abs(a - b) <= 0.1 * np.maximum(a, b) + 1.0)  # series current: equal
    first = np.flatnonzero(active)[0]
    before = ep.setpoint[first, others].mean()
    assert 0.6 < ep.current[first, others].mean() / before < 1.1  # ~0.87 before regulation


def test_power_cut_is_normal_and_all_phases_zero() -> None:
    for seed in range(40):
        ep = _one(None, seed=seed)
        cuts = [n for n in ep.nuisances if n["kind"] == "power_cut"]
        if cuts:
            break
    else:
        pytest.fail("no power cut in 40 seeds")
    cut = cuts[0]
    inside = (ep.t_cur >= cut["start_s"] + 0.5) & (ep.t_cur < cut["end_s"])
    assert np.all(ep.current[inside] == 0.0)
    assert np.all(ep.label_cur[inside] == 0)
    assert np.all(ep.plc[inside, 0] == 0)


def test_dips_never_on_two_phases_and_clip_respected() -> None:
    ep = _one(None, seed=2)
    normal = ep.latent["power"] >= 1.0
    low = ep.current[normal] < 0.6 * np.median(ep.current[normal], 0)
    assert (low.sum(1) >= 2).mean() < 0.002
    assert low.any()
    assert ep.current.max() <= CLIP_A and ep.current.min() >= 0.0


def test_eruption_loses_arcs_on_several_phases() -> None:
    ep = _one("eruption", seed=8)
    lab = ep.label_cur == CLASS_INDEX["eruption"]
    low = ep.current[lab] < 0.4 * ep.setpoint[lab]
    assert (low.sum(1) >= 2).any()
    assert ep.current[lab].std() > 2 * ep.current[~lab & (ep.latent["power"] >= 1)].std()


def test_faults_set_health_and_never_change_labels() -> None:
    ep = _one("semi_molten", seed=1, render=True)
    faults = [
        FaultEvent("nan", "current", 100.0, 110.0, phase=1),
        FaultEvent("stuck", "current", 200.0, 220.0, phase=0),
        FaultEvent("clipped", "current", 300.0, 320.0),
        FaultEvent("missing", "current", 400.0, 405.0),
        FaultEvent("frozen", "camera", 100.0, 130.0),
        FaultEvent("black", "camera", 200.0, 230.0, seed=1),
        FaultEvent("occluded", "camera", 300.0, 330.0, value=0.7, seed=2),
        FaultEvent("disconnected", "camera", 400.0, 430.0),
        FaultEvent("skew", "camera", 500.0, 530.0, value=3.0),
    ]
    faulty = replace(ep, faults=faults)
    obs = apply_faults(faulty)
    t = ep.t_cur
    assert np.isnan(obs.current[(t >= 100) & (t < 110), 1]).all()
    assert not np.isnan(obs.current[(t >= 100) & (t < 110), 0]).any()
    stuck = obs.current[(t >= 200) & (t < 220), 0]
    assert np.all(stuck == stuck[0])
    assert np.all(obs.current[(t >= 300) & (t < 320)] == CLIP_A)
    assert not obs.cur_present[(t >= 400) & (t < 405)].any()
    assert obs.health_cur[(t >= 100) & (t < 110)].max() & CURRENT_HEALTH["nan"]
    tf = ep.t_frame
    frozen = obs.frames[(tf >= 100) & (tf < 130)]
    assert np.all(frozen == frozen[0])
    black = obs.frames[(tf >= 200) & (tf < 230)]
    assert black.mean() < 8 and black.std() < 2
    assert not obs.frame_present[(tf >= 400) & (tf < 430)].any()
    assert np.allclose(obs.t_frame[(tf >= 500) & (tf < 530)], tf[(tf >= 500) & (tf < 530)] + 3.0)
    assert obs.health_frame[(tf >= 300) & (tf < 330)].min() & CAMERA_HEALTH["occluded"]
    assert obs.health_frame[(tf < 100)].max() == 0
    # The episode is untouched: clean observations, same labels.
    assert np.isfinite(ep.current).all()
    assert np.array_equal(faulty.label_cur, ep.label_cur)


def test_fault_draws_are_deterministic_and_cover_kinds() -> None:
    cfg = SimConfig(minutes=60.0, fault_rate_per_h=20.0)
    spec = RunSpec(seed=9, furnaces=2, config=cfg)
    a = [f.as_dict() for ep in generate(spec, render=False) for f in ep.faults]
    b = [f.as_dict() for ep in generate(spec, render=False) for f in ep.faults]
    assert a == b
    assert len({f["kind"] for f in a}) >= 6


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="camera_fps"):
        SimConfig(camera_fps=0.0)
    with pytest.raises(ValueError, match="unknown condition"):
        SimConfig(condition="meltdown")
    with pytest.raises(ValueError, match="lead-in"):
        SimConfig(minutes=1.0)
