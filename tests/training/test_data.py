"""Model windows: shapes, causality, baseline from history only, splits, validity."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from simulator.config import CAMERA_HEALTH, CURRENT_HEALTH
from simulator.types import FaultEvent
from tests.helpers.fmf_fixture import CONDITION, as_recording, make_episode, write_real_fmf_fixture
from training.data import concat_windows, load_windows, make_windows
from training.data.fmf import Recording, read_fmf
from training.data.fmf_write import write_fmf


def test_shapes_and_contents() -> None:
    ep = make_episode(seconds=200.0)
    w = make_windows(as_recording(ep))
    assert len(w) == 32 and w.t_end[0] == 136.0 and w.t_end[-1] == 198.0
    assert np.all(np.diff(w.t_end) == 2.0)
    assert w.x_c.shape == (32, 8, 4, 3) and w.x_c.dtype == np.float32
    assert w.x_v.shape == (32, 8, 64, 64, 3) and w.x_v.dtype == np.uint8
    assert w.baseline.shape == (32, 3) and w.label.shape == (32,) and not w.binary
    assert w.valid_cur.all() and w.valid_cam.all() and (w.recording == "ep0").all()
    i = 5
    t_end = w.t_end[i]
    in_window = (ep.t_cur > t_end - 16.0) & (ep.t_cur <= t_end)  # (t_end - 16 s, t_end]
    np.testing.assert_array_equal(w.x_c[i].reshape(32, 3), ep.current[in_window])
    seg_ends = t_end - 16.0 + 2.0 * np.arange(1, 9)
    np.testing.assert_array_equal(w.x_v[i], ep.frames[np.searchsorted(ep.t_frame, seg_ends)])
    np.testing.assert_array_equal(w.camera(np.array([i]))[0], w.x_v[i])


def test_label_is_causal_at_the_window_end() -> None:
    ep = make_episode(seconds=200.0, event_s=(151.0, 171.0))
    w = make_windows(as_recording(ep))
    expected = np.where((w.t_end >= 151.0) & (w.t_end < 171.0), CONDITION, 0)
    np.testing.assert_array_equal(w.label, expected)
    assert w.severity_max[w.t_end == 150.0] == 0.0 and w.severity_max[w.t_end == 152.0] > 0
    # the future never leaks: changing everything after t_end leaves the window unchanged
    rec = as_recording(ep)
    later = rec.t_cur > 150.0
    rec.current = np.where(later[:, None], np.float32(0.0), rec.current)
    rec.frames = np.where((rec.t_frame > 150.0)[:, None, None, None], np.uint8(0), rec.frames)
    w2 = make_windows(rec)
    keep = w.t_end <= 150.0
    np.testing.assert_array_equal(w2.x_c[keep], w.x_c[keep])
    np.testing.assert_array_equal(w2.x_v[keep], w.x_v[keep])


def test_baseline_is_the_median_of_the_history_only() -> None:
    ep = make_episode(seconds=200.0)
    rec = as_recording(ep)
    w = make_windows(rec)
    t_end = w.t_end[3]
    hist = (ep.t_cur > t_end - 136.0) & (ep.t_cur <= t_end - 16.0)
    assert hist.sum() == 240
    np.testing.assert_allclose(w.baseline[3], np.median(ep.current[hist], axis=0))
    rec.current = rec.current.copy()
    rec.current[(rec.t_cur > t_end - 16.0) & (rec.t_cur <= t_end)] += 5000.0  # the window
    np.testing.assert_array_equal(make_windows(rec).baseline[3], w.baseline[3])
    short = make_windows(as_recording(make_episode(seconds=135.0)))
    assert len(short) == 0  # no window without a full baseline history


def test_the_long_baseline_is_the_median_of_up_to_its_horizon() -> None:
    ep = make_episode(seconds=400.0)
    rec = as_recording(ep)
    short, long = make_windows(rec), make_windows(rec, long_baseline_s=300.0)
    assert long.baseline.shape == (len(short), 6)
    np.testing.assert_array_equal(long.t_end, short.t_end)  # the same windows
    np.testing.assert_array_equal(long.baseline[:, :3], short.baseline)
    for i in (0, len(long) - 1):  # expanding early in the recording, then the full horizon
        start = long.t_end[i] - 16.0
        hist = (ep.t_cur > max(start - 300.0, -1.0)) & (ep.t_cur <= start)
        assert hist.sum() == min(600, int(round(start * 2.0)) + 1)
        np.testing.assert_allclose(long.baseline[i, 3:], np.median(ep.current[hist], axis=0))
    with pytest.raises(ValueError, match="long_baseline_s"):
        make_windows(rec, long_baseline_s=60.0)


def test_no_window_crosses_splits() -> None:
    ep = make_episode(seconds=400.0)
    split = np.where(ep.t_frame < 250.0, "train", np.where(ep.t_frame < 280.0, "guard", "test"))
    rec = as_recording(ep, split=split)
    parts = {s: make_windows(rec, split=s, baseline_s=20.0) for s in ("train", "guard", "test")}
    assert parts["train"].t_end.max() <= 249.5 and (parts["train"].split == "train").all()
    assert parts["test"].t_end.min() - 16.0 >= 280.0 - 0.5 and (parts["test"].split == "test").all()
    assert len(parts["guard"]) == 7  # ends 266..278: 16 s inside the 30-s guard band
    every = make_windows(rec, baseline_s=20.0)
    assert len(every) > sum(len(p) for p in parts.values())  # windows straddling splits
    merged = concat_windows(list(parts.values()))
    assert len(merged) == sum(len(p) for p in parts.values())
    np.testing.assert_array_equal(merged.x_v[-1], parts["test"].x_v[-1])


def test_missing_samples_and_frames_invalidate_windows() -> None:
    ep = make_episode(seconds=220.0)
    rec = as_recording(ep)
    gap = (rec.t_cur >= 170.0) & (rec.t_cur < 172.0)
    nan = (rec.t_cur >= 200.0) & (rec.t_cur < 200.5)
    rec.current = rec.current.copy()
    rec.current[nan, 1] = np.nan
    rec.health_cur = np.where(nan, CURRENT_HEALTH["nan"], 0).astype(np.uint8)
    for k in ("t_cur", "current", "label_cur", "sev_cur", "health_cur"):
        setattr(rec, k, getattr(rec, k)[~gap])  # a real gap: rows absent
    lost = (rec.t_frame >= 150.0) & (rec.t_frame < 151.0)
    rec.frame_present = ~lost
    w = make_windows(rec)

    def touches(first_s: float, last_s: float) -> np.ndarray:
        """Windows (t_end - 16, t_end] holding a sample time in [first_s, last_s]."""
        return (w.t_end - 16.0 < last_s) & (w.t_end >= first_s)

    np.testing.assert_array_equal(w.valid_cur, ~touches(170.0, 171.5) & ~touches(200.0, 200.0))
    np.testing.assert_array_equal(w.valid_cam, ~touches(150.0, 150.5))
    assert (w.health_cur[touches(200.0, 200.0)] == CURRENT_HEALTH["nan"]).all()
    assert not w.health_cur[~touches(200.0, 200.0)].any()
    assert (w.frame_index[touches(150.0, 150.5)] == -1).any()


def test_faulted_recording_windows(tmp_path: Path) -> None:
    faults = [
        FaultEvent("missing", "current", 160.0, 165.0),
        FaultEvent("frozen", "camera", 180.0, 190.0),
    ]
    write_fmf([make_episode(seconds=220.0, faults=faults)], tmp_path, progress=False)
    (rec,) = read_fmf(tmp_path, apply_faults=True)
    w = make_windows(rec)
    hit = (w.t_end - 16.0 < 165.0) & (w.t_end >= 160.0)
    assert not w.valid_cur[hit].any() and w.valid_cur[~hit].all()
    assert (w.health_cur[hit] == CURRENT_HEALTH["missing"]).all()
    frozen = (w.t_end - 16.0 < 190.0) & (w.t_end >= 180.0)
    assert (w.health_cam[frozen] == CAMERA_HEALTH["frozen"]).all() and w.valid_cam.all()
    clean = load_windows(tmp_path)
    assert len(clean) == len(w) and clean.valid_cur.all() and not clean.health_cur.any()


def test_real_fmf_fixture_windows(tmp_path: Path) -> None:
    write_real_fmf_fixture(tmp_path, videos=(("SaveToAvi-4-19-21_40_52-6002", 200.0),))
    (rec,) = read_fmf(tmp_path)
    assert np.abs(np.diff(rec.t_frame) - 0.5).max() < 0.03  # subsampled to 2 fps
    w = make_windows(rec, baseline_s=30.0)
    assert w.binary and set(np.unique(w.label)) == {0, 1}
    assert w.valid_cur.all() and w.valid_cam.all() and np.isnan(w.severity_max).all()
    # frame times are 2 s ahead of the fixture's frame clock (currents lead by 2 s)
    np.testing.assert_array_equal(w.label, (w.t_end >= 152.0) & (w.t_end < 177.0))
    train = load_windows(tmp_path, split="train", baseline_s=30.0)
    test = load_windows(tmp_path, split="test", baseline_s=30.0)
    assert len(train) and len(test) and train.t_end.max() + 6.0 < test.t_end.min() - 16.0
    with pytest.raises(ValueError, match="mix"):
        concat_windows([train, make_windows(as_recording(make_episode(seconds=140.0)))])


def test_select_and_window_parameters() -> None:
    w = make_windows(as_recording(make_episode(seconds=200.0)), window_s=8.0, segments=4)
    assert w.x_c.shape[1:] == (4, 4, 3) and w.frame_index.shape[1] == 4
    sub = w.select(w.t_end > 150.0)
    assert len(sub) == int((w.t_end > 150.0).sum()) and sub.x_v.shape[1] == 4
    with pytest.raises(ValueError, match="whole number"):
        make_windows(as_recording(make_episode(seconds=200.0)), window_s=16.0, segments=5)


def test_windows_of_ten_half_hour_episodes() -> None:
    rng = np.random.default_rng(0)
    n = 3600  # 30 min at 2 Hz and 2 fps
    frames = np.broadcast_to(rng.integers(0, 255, (1, 64, 64, 3), np.uint8), (n, 64, 64, 3))
    rec = Recording(
        "long",
        np.arange(n) / 2.0,
        rng.normal(15000.0, 500.0, (n, 3)).astype(np.float32),
        np.arange(n) / 2.0,
        frames,
        np.zeros(n, np.uint8),
        np.full(n, "train"),
        label_cur=np.zeros(n, np.int8),
    )
    w = concat_windows([make_windows(replace(rec, name=f"e{i}")) for i in range(10)])
    assert len(w) == 10 * 832 and w.valid_cur.all()
