"""Modality health: rule by rule on small arrays, then calibrated on simulator episodes.

On simulated data every clean window (normal or any furnace condition) must be "ok", and
windows inside an injected sensor fault must carry that fault's health.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.health import HealthConfig, camera_health, current_health
from service.types import Window, WindowSpec
from service.windows import WindowAssembler
from simulator.config import CONDITIONS, SimConfig
from simulator.episode import random_furnace_params, simulate_episode
from simulator.faults import apply_faults, draw_faults
from simulator.types import Episode, FaultEvent

CLIP = 20000.0


@pytest.fixture
def current() -> np.ndarray:
    return (15000.0 + 1500.0 * np.random.default_rng(0).standard_normal((32, 3))).astype(np.float32)


@pytest.fixture
def frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(20, 200, (1, 64, 64, 3))
    return np.clip(base + rng.normal(0, 2.0, (8, 64, 64, 3)), 0, 255).astype(np.uint8)


@pytest.mark.fault(
    "current windows short of samples or empty; a (N, 2) array",
    expected="health `missing`; the wrong shape is a ValueError; an all-zero current (power cut) "
    "is `ok`",
)
def test_current_ok_and_missing(current: np.ndarray) -> None:
    assert current_health(current, expected=32) == "ok"
    assert current_health(current[:31], expected=32) == "missing"
    assert current_health(np.zeros((0, 3))) == "missing"
    assert current_health(np.zeros((32, 3))) == "ok"  # a power cut is process, not a fault
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        current_health(np.zeros((32, 2)))


@pytest.mark.fault(
    "NaN or Inf in one phase (with a stuck run as well)",
    expected="health `nan`",
)
def test_current_nan_wins(current: np.ndarray) -> None:
    for bad in (np.nan, np.inf):
        x = current.copy()
        x[7, 1] = bad
        x[10:20, 0] = 12345.0  # stuck as well: nan has precedence
        assert current_health(x) == "nan"


@pytest.mark.fault(
    "a phase repeating one value 4 times",
    expected="health `stuck`; 3 repeats, a dead phase at 0 or a run at the clip are `ok`",
)
def test_current_stuck(current: np.ndarray) -> None:
    x = current.copy()
    x[10:13, 2] = x[10, 2]  # three repeats: ok (the log shows up to two)
    assert current_health(x) == "ok"
    x[10:14, 2] = x[10, 2]
    assert current_health(x) == "stuck"
    x = current.copy()
    x[:, 0] = 0.0  # a dead phase (broken electrode, residual 0) is process
    x[5:15, 1] = CLIP  # a run at the ceiling is clipping, not stuck
    assert current_health(x) == "ok"


@pytest.mark.fault(
    "phases pinned at the 20 kA clip for a whole window",
    expected="health `clipped`, unless every phase runs hot (overheating is process)",
)
def test_current_clipped_only_when_other_phases_stay_low(current: np.ndarray) -> None:
    x = current.copy()
    x[:, 1] = CLIP  # one phase pinned for the whole window, the others at 15 kA: a fault
    assert current_health(x) == "clipped"
    x[0, 1] = 19990.0  # not the whole window
    assert current_health(x) == "ok"
    hot = (19400.0 + 300.0 * np.random.default_rng(1).standard_normal((32, 3))).astype(np.float32)
    hot[:, 0] = CLIP  # overheating: one phase clipped, the others near the clip too
    assert current_health(hot) == "ok"
    hot[:, 1:] = CLIP  # all three pinned
    assert current_health(hot) == "clipped"
    pinned2 = current.copy()
    pinned2[:, :2] = CLIP  # two faulty phases, the third one normal
    assert current_health(pinned2) == "clipped"
    y = current.copy()
    y[:, 2] = 19000.0  # a constant at the window max with clip_a=None: clipped
    assert current_health(y, config=HealthConfig(clip_a=None)) == "clipped"
    assert current_health(np.zeros((32, 3)), config=HealthConfig(clip_a=None)) == "ok"


@pytest.mark.fault(
    "camera windows short of frames, 3 identical frames, black frames, a static overlay over 55 % "
    "of the rows, float frames",
    expected="health `missing`, `frozen`, `dark`, `occluded`; a saturated flame stays `ok`; float "
    "frames are a ValueError",
)
def test_camera_rules(frames: np.ndarray) -> None:
    assert camera_health(frames, expected=8) == "ok"
    assert camera_health(frames[:7], expected=8) == "missing"
    assert camera_health(frames[:0]) == "missing"
    f = frames.copy()
    f[3:5] = f[2]  # three identical frames in a row
    assert camera_health(f) == "frozen"
    f = frames.copy()
    f[3] = f[2]  # two are not enough
    assert camera_health(f) == "ok"
    black = np.clip(np.random.default_rng(2).normal(1.5, 0.8, f.shape), 0, 255).astype(np.uint8)
    f[2:5] = black[2:5]
    assert camera_health(f) == "dark"
    f = frames.copy()
    f[:, 10:45] = 77  # a static overlay over 55 % of the rows
    assert camera_health(f) == "occluded"
    f = frames.copy()
    f[:, :40] = 255  # saturated flame or ejecta area: static, but not an occlusion
    f[:, 40:48] = 0
    assert camera_health(f) == "ok"
    f = frames.copy()
    f[:] = 0  # identical and black: dark has precedence
    assert camera_health(f) == "dark"
    with pytest.raises(ValueError, match="uint8"):
        camera_health(frames.astype(np.float32))  # type: ignore[arg-type]


@pytest.mark.fault(
    "health settings out of range (stuck_run 1, occluded_fraction 0)",
    expected="ValueError naming the setting",
)
def test_config_validation() -> None:
    with pytest.raises(ValueError, match="stuck_run"):
        HealthConfig(stuck_run=1)
    with pytest.raises(ValueError, match="fraction"):
        HealthConfig(occluded_fraction=0.0)


# --------------------------------------------------------------------------- simulator

EXPECTED = {
    "stuck": {"stuck"},
    "nan": {"nan"},
    "clipped": {"clipped"},
    "missing": {"missing", "stale"},
    "frozen": {"frozen"},
    "black": {"dark"},
    "occluded": {"occluded"},
    "disconnected": {"stale", "missing"},
}
CASES = [  # condition, current fault (kind, phase), camera fault (kind, value)
    ("eruption", ("stuck", 0), ("frozen", 0.0)),
    ("electrode_breakage", ("nan", -1), ("black", 0.0)),
    ("overheating", ("clipped", 1), ("occluded", 0.7)),
    ("semi_molten", ("missing", -1), ("disconnected", 0.0)),
    ("abnormal_exhaust", ("clipped", -1), ("occluded", 0.5)),
]
FAULT_CUR, FAULT_CAM = (250.0, 300.0), (180.0, 230.0)


def _assemble(ep: Episode, faults: list[FaultEvent]) -> list[Window]:
    """Windows of the faulted episode, fed in sensor-time order and popped as a consumer would."""
    obs = apply_faults(replace(ep, faults=faults))
    asm = WindowAssembler(ep.furnace_id, WindowSpec())
    t0 = ep.start_epoch
    entries = [(t0 + t, 0, i) for i, t in enumerate(obs.t_cur) if obs.cur_present[i]]
    entries += [(t0 + t, 1, i) for i, t in enumerate(obs.t_frame) if obs.frame_present[i]]
    out: list[Window] = []
    for n, (ts, kind, i) in enumerate(sorted(entries)):
        if kind == 0:
            asm.add_current(ts, *(float(v) for v in obs.current[i]))
        else:
            asm.add_frame(ts, obs.frames[i])
        if n % 10 == 0:
            out += asm.pop_closed()
    return out + asm.pop_closed()


def _episode(seed: int, condition: str, minutes: float = 6.0) -> Episode:
    cfg = SimConfig(minutes=minutes, faults=False, condition=condition, event_free_fraction=0.0)
    params = random_furnace_params(f"f{seed}", np.random.default_rng(seed))
    return simulate_episode(params, cfg, np.random.SeedSequence(seed), name="h")


@pytest.mark.parametrize(("condition", "cur", "cam"), CASES)
@pytest.mark.fault(
    "a simulated current and camera fault during {condition}",
    expected="at least 90 % of the windows inside a fault carry its health; every clean window "
    "reads `ok`",
)
def test_simulated_faults_detected_and_conditions_stay_ok(
    condition: str, cur: tuple[str, int], cam: tuple[str, float]
) -> None:
    seed = CASES.index((condition, cur, cam)) + 11
    ep = _episode(seed, condition)
    windows = _assemble(
        ep,
        [
            FaultEvent(cur[0], "current", *FAULT_CUR, phase=cur[1], seed=seed),
            FaultEvent(cam[0], "camera", *FAULT_CAM, value=cam[1], seed=seed),
        ],
    )
    clean = {"current": [], "camera": []}
    inside = {"current": [], "camera": []}
    labels = []
    for w in windows:
        e = w.end - ep.start_epoch
        if e < 136.0:  # no full baseline yet: "missing" current, like offline windowing
            assert w.health("current") == "missing"
            continue
        for modality, (lo, hi), kind in (
            ("current", FAULT_CUR, cur[0]),
            ("camera", FAULT_CAM, cam[0]),
        ):
            if hi <= e - 17.0 or lo >= e + 1.0:
                clean[modality].append(w.health(modality))
                labels.append(int(ep.label_cur[int(e * 2)]))
            elif lo <= e - 16.5 and hi > e + 0.5:
                inside[modality].append(w.health(modality) in EXPECTED[kind])
    assert any(label > 0 for label in labels)  # the condition was on in clean windows
    for modality in ("current", "camera"):
        assert clean[modality] and set(clean[modality]) == {"ok"}, modality
        assert len(inside[modality]) >= 10 and np.mean(inside[modality]) >= 0.9


@pytest.mark.slow
@pytest.mark.fault(
    "random sensor faults (12 an hour) on 25 ten-minute episodes of every condition",
    expected="every clean window away from a fault reads `ok`",
)
def test_no_false_positives_on_clean_windows_of_many_episodes() -> None:
    """The calibration run: random faults on 25 ten-minute episodes of every condition."""
    n_clean = 0
    for seed in range(25):
        ep = _episode(100 + seed, CONDITIONS[seed % 5], minutes=10.0)
        faults = draw_faults(600.0, np.random.default_rng(seed), rate_per_h=12.0)
        for w in _assemble(ep, faults):
            e = w.end - ep.start_epoch
            for modality in ("current", "camera"):
                near = [
                    f
                    for f in faults
                    if f.modality == modality
                    and f.start_s < e + (11.0 if f.kind == "skew" else 1.0)
                    and f.end_s > e - (27.0 if f.kind == "skew" else 17.0)
                ]
                if e >= 136.0 and not near:
                    n_clean += 1
                    assert w.health(modality) == "ok", (seed, e, modality, w.health(modality))
    assert n_clean > 5000
