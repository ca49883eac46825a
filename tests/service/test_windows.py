"""Online window assembly: the same arrays as training.data.make_windows, closing rules, bounds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.types import Window, WindowSpec
from service.windows import WindowAssembler
from simulator.config import SimConfig
from simulator.episode import random_furnace_params, simulate_episode
from simulator.faults import apply_faults
from simulator.types import Episode, FaultEvent
from tests.helpers.fmf_fixture import as_recording
from training.data import make_windows

SPEC = WindowSpec()
T0 = 1_700_000_000.0  # a multiple of the hop, so window ends land on whole hops


@pytest.fixture(scope="module")
def episode() -> Episode:
    cfg = SimConfig(minutes=5, faults=False, condition="eruption", event_free_fraction=0.0)
    params = random_furnace_params("f1", np.random.default_rng(3))
    return simulate_episode(params, cfg, np.random.SeedSequence(7), name="w")


def _entries(ep: Episode) -> list[tuple[float, int, int]]:
    """(sensor ts, 0 current / 1 frame, index) in time order."""
    out = [(ep.start_epoch + t, 0, i) for i, t in enumerate(ep.t_cur)]
    out += [(ep.start_epoch + t, 1, i) for i, t in enumerate(ep.t_frame)]
    return sorted(out)


def _feed(asm: WindowAssembler, ep: Episode, entry: tuple[float, int, int]) -> str:
    ts, kind, i = entry
    if kind == 0:
        return asm.add_current(ts, *(float(v) for v in ep.current[i]))
    return asm.add_frame(ts, ep.frames[i])


def _assert_matches_offline(ep: Episode, windows: list[Window], **window: float) -> int:
    """Every offline window has an online twin with identical x, baseline and frames."""
    off = make_windows(as_recording(ep), **window)
    online = {round(w.end - ep.start_epoch, 6): w for w in windows}
    x_v = off.x_v
    for j, t_end in enumerate(off.t_end):
        w = online[round(float(t_end), 6)]
        assert w.current is not None and w.camera is not None
        np.testing.assert_array_equal(w.current.x, off.x_c[j])
        np.testing.assert_array_equal(w.current.baseline, off.baseline[j])
        np.testing.assert_array_equal(w.camera.frames, x_v[j])
        assert w.current.x.dtype == np.float32 and w.current.baseline.dtype == np.float32
    return len(off)


def test_shuffled_arrival_matches_make_windows(episode: Episode) -> None:
    asm = WindowAssembler("f1", SPEC)
    entries = _entries(episode)
    for k in np.random.default_rng(0).permutation(len(entries)):
        assert _feed(asm, episode, entries[k]) == "added"
    windows = asm.pop_closed()
    assert _assert_matches_offline(episode, windows) >= 80
    ends = [w.end - episode.start_epoch for w in windows]
    assert ends == list(np.arange(16.0, 299.0, 2.0))  # every hop, each once
    assert all(w.health("current") == "ok" for w in windows if w.end - episode.start_epoch >= 136)
    assert all(
        w.health("current") == "missing" for w in windows if w.end - episode.start_epoch < 136
    )
    assert all(w.health("camera") == "ok" for w in windows)
    assert asm.pop_closed() == []  # nothing is emitted twice


def test_the_long_baseline_matches_make_windows_while_streaming(episode: Episode) -> None:
    spec = replace(SPEC, long_baseline_seconds=200.0)
    asm = WindowAssembler("f1", spec)
    windows = []
    for e in _entries(episode):  # in time order: pruning runs while the windows close
        _feed(asm, episode, e)
        windows += asm.pop_closed()
    assert _assert_matches_offline(episode, windows, long_baseline_s=200.0) >= 80
    late = [w for w in windows if w.end - episode.start_epoch > 250]
    assert late and all(w.current is not None and w.current.baseline.shape == (6,) for w in late)
    w = late[-1]
    assert w.current is not None
    assert not np.array_equal(w.current.baseline[:3], w.current.baseline[3:])  # two medians
    assert asm.history_seconds >= 200.0 + spec.window_seconds


@pytest.mark.fault(
    "entries reordered by up to 0.8 s of network jitter",
    expected="the same windows as in order; buffers stay bounded; nothing counted late",
)
def test_streaming_with_jitter_matches_batch_and_stays_bounded(episode: Episode) -> None:
    batch = WindowAssembler("f1", SPEC)
    for e in _entries(episode):
        _feed(batch, episode, e)
    expected = batch.pop_closed()
    rng = np.random.default_rng(1)
    arrival = [e[0] + rng.uniform(0.0, 0.8) for e in _entries(episode)]  # network reordering
    live = WindowAssembler("f1", SPEC)
    got: list[Window] = []
    for n, k in enumerate(np.argsort(arrival)):
        assert _feed(live, episode, _entries(episode)[k]) == "added"
        if n % 7 == 0:
            got += live.pop_closed()
            assert len(live._t) <= (16 + 120 + 6) * 2 + 4  # window + baseline + margin
            assert len(live._tf) <= (16 + 6) * 2 + 4
    got += live.pop_closed()
    assert [w.end for w in got] == [w.end for w in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.health("current") == b.health("current") and a.health("camera") == b.health(
            "camera"
        )
        if a.current is not None and b.current is not None:
            np.testing.assert_array_equal(a.current.x, b.current.x)
            np.testing.assert_array_equal(a.current.baseline, b.current.baseline)
        if a.camera is not None and b.camera is not None:
            np.testing.assert_array_equal(a.camera.frames, b.camera.frames)
    assert live.late == {"current": 0, "camera": 0}


@pytest.mark.fault(
    "nan, stuck and clipped current; frozen, black and occluded camera (simulated)",
    expected="the windows match offline windowing and carry each fault's health",
)
def test_in_place_faults_match_make_windows(episode: Episode) -> None:
    faults = [
        FaultEvent("nan", "current", 150.0, 160.0, phase=1),
        FaultEvent("stuck", "current", 200.0, 230.0, phase=0),
        FaultEvent("clipped", "current", 250.0, 280.0, phase=2),
        FaultEvent("frozen", "camera", 140.0, 170.0),
        FaultEvent("black", "camera", 200.0, 220.0, seed=1),
        FaultEvent("occluded", "camera", 240.0, 280.0, value=0.8, seed=2),
    ]
    obs = apply_faults(replace(episode, faults=faults))
    faulted = replace(episode, current=obs.current, frames=obs.frames)
    asm = WindowAssembler("f1", SPEC)
    for e in _entries(faulted):
        _feed(asm, faulted, e)
    windows = asm.pop_closed()
    _assert_matches_offline(faulted, windows)
    health = {
        w.end - episode.start_epoch: (w.health("current"), w.health("camera")) for w in windows
    }
    assert health[160.0][0] == "nan" and health[228.0][0] == "stuck"
    assert health[278.0][0] == "clipped" and health[168.0][1] == "frozen"
    assert health[218.0][1] == "dark" and health[278.0][1] == "occluded"


def _stream(
    asm: WindowAssembler,
    seconds: float,
    *,
    start: float = T0,
    camera: bool = True,
    seed: int = 0,
    skip: float | None = None,
) -> None:
    rng = np.random.default_rng(seed)
    for k in range(int(seconds * 2)):
        t = start + k / 2
        values = 15000.0 + 1500.0 * rng.standard_normal(3)
        if t != skip:
            asm.add_current(t, *values)
        if camera:
            asm.add_frame(t, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.mark.fault(
    "a clipped-current fault (all three phases pinned at 20 kA) that ends mid-window",
    expected="the windows that start inside the fault are `clipped` too, the first one "
    "after it `ok`; a clean window that starts at the ceiling stays `ok`",
)
def test_a_clipped_faults_end_is_clipped_not_a_condition() -> None:
    asm = WindowAssembler("f", SPEC, grace_seconds=1.0)
    rng = np.random.default_rng(3)
    fault = (T0 + 150.0, T0 + 180.0)  # 30 s pinned, as the simulator's clipped fault
    for k in range(int(220.0 * 2)):
        t = T0 + k / 2
        values = 15000.0 + 1500.0 * rng.standard_normal(3)
        if fault[0] <= t < fault[1]:
            values = np.full(3, 20000.0)
        asm.add_current(t, *values)
    health = {w.end - T0: w.health("current") for w in asm.pop_closed()}
    assert health[148.0] == "ok"
    assert health[180.0] == "clipped"  # the whole window pinned: the rule itself
    # window ends 182..194 start inside the fault (it ends at 180; windows are 16 s long)
    assert all(health[e] == "clipped" for e in (182.0, 186.0, 190.0, 194.0))
    assert health[196.0] == "ok"  # starts at 180: the fault is over
    clean = WindowAssembler("f", SPEC, grace_seconds=1.0)  # no flagged window before
    for k in range(int(220.0 * 2)):
        t = T0 + k / 2
        level = 20000.0 if T0 + 180.0 <= t < T0 + 186.0 else 15000.0 + 500 * np.sin(k)
        clean.add_current(t, level, level, level)
    assert all(w.health("current") == "ok" for w in clean.pop_closed() if w.end > T0 + 136.0)


@pytest.mark.fault(
    "a camera that never sends a frame",
    expected="windows close on the current's grace alone, camera `missing`",
)
def test_closing_needs_grace_and_a_dead_camera_never_blocks() -> None:
    asm = WindowAssembler("f", SPEC, grace_seconds=1.0)
    _stream(asm, 140.0, camera=False)  # current up to T0 + 139.5
    windows = asm.pop_closed()
    assert windows[-1].end == T0 + 138.0  # 138 + 1 <= 139.5 < 140 + 1
    assert all(w.camera is None and w.health("camera") == "missing" for w in windows)
    assert windows[-1].health("current") == "ok"
    asm.add_current(T0 + 140.0, 1.0, 2.0, 3.0)
    assert asm.pop_closed() == []  # 140 needs 141
    assert [w.end for w in asm.pop_closed(until=T0 + 141.0)] == [T0 + 140.0]


@pytest.mark.fault(
    "a camera that stops mid-stream; one dropped current packet",
    expected="camera `missing`, then `stale`; windows holding the gap read current `missing`",
)
def test_dead_camera_is_stale_and_a_gap_is_missing() -> None:
    asm = WindowAssembler("f", SPEC)
    _stream(asm, 150.0)
    _stream(asm, 30.0, start=T0 + 150.0, camera=False, seed=1)
    health = {w.end - T0: w.health("camera") for w in asm.pop_closed()}
    assert health[148.0] == "ok"
    assert health[150.0] == health[152.0] == "missing"  # no frame within 0.25 s of 150
    assert health[154.0] == "stale" and health[178.0] == "stale"  # newest frame > 3 s old
    gap = WindowAssembler("f", SPEC)
    _stream(gap, 160.0, skip=T0 + 145.0)  # one dropped current packet
    health = {w.end - T0: w.health("current") for w in gap.pop_closed()}
    assert health[144.0] == "ok" and health[146.0] == health[158.0] == "missing"


@pytest.mark.fault(
    "late entries (behind the last closed window or the buffer) and duplicates",
    expected="counted as late or duplicate, never re-scored; the first value is kept",
)
def test_late_and_duplicate_entries_are_counted_never_rescored() -> None:
    asm = WindowAssembler("f", SPEC)
    _stream(asm, 150.0)
    first = asm.pop_closed()
    last = asm.last_closed_end
    assert last == first[-1].end
    assert asm.add_current(last - 3.25, 1.0, 1.0, 1.0) == "late"
    assert asm.add_frame(last, np.zeros((64, 64, 3), np.uint8)) == "duplicate"
    assert asm.add_current(T0 + 5.0, 1.0, 1.0, 1.0) == "late"  # older than the buffer
    assert asm.late == {"current": 2, "camera": 0} and asm.duplicates["camera"] == 1
    assert asm.pop_closed() == []
    before = asm._v[asm._t.index(T0 + 149.5)]
    assert asm.add_current(T0 + 149.5, 0.0, 0.0, 0.0) == "duplicate"
    assert asm._v[asm._t.index(T0 + 149.5)] == before  # the first value is kept


@pytest.mark.fault(
    "a restart resuming from the stored last window end (and one set backwards or off the hop)",
    expected="the same windows as an uninterrupted run; the resume point never moves back; off "
    "the hop is a ValueError",
)
def test_resume_after_restart_rebuilds_the_same_windows() -> None:
    full = WindowAssembler("f", SPEC)
    _stream(full, 200.0)
    reference = {w.end: w for w in full.pop_closed()}
    resumed = WindowAssembler("f", SPEC, last_closed_end=T0 + 170.0)  # state hash says so
    _stream(resumed, 200.0)  # XRANGE history, then new entries
    got = resumed.pop_closed()
    assert got[0].end == T0 + 172.0
    for w in got:
        np.testing.assert_array_equal(w.current.x, reference[w.end].current.x)  # type: ignore[union-attr]
        assert w.health("current") == reference[w.end].health("current") == "ok"
    assert resumed.history_seconds >= 16 + 120
    with pytest.raises(ValueError, match="multiple of the hop"):
        WindowAssembler("f", SPEC, last_closed_end=T0 + 1.0)
    late = WindowAssembler("f", SPEC)  # resume point set after construction, as ingest does
    late.last_closed_end = T0 + 170.0
    late.last_closed_end = T0 + 100.0  # never backwards
    _stream(late, 200.0)
    assert [w.end for w in late.pop_closed()] == [w.end for w in got]


@pytest.mark.fault(
    "a 10-hour gap in a furnace's data",
    expected="the empty windows are skipped and counted, not scored; a fresh baseline after it",
)
def test_long_gap_is_skipped_and_counted() -> None:
    asm = WindowAssembler("f", SPEC)
    _stream(asm, 150.0)
    asm.pop_closed()
    _stream(asm, 150.0, start=T0 + 10 * 3600.0, seed=2)  # ten hours later
    windows = asm.pop_closed()
    assert asm.skipped_windows > 17000 and len(windows) < 170
    assert windows[-1].end == T0 + 10 * 3600.0 + 148.0
    assert windows[-1].health("current") == "ok"  # a fresh full baseline after the gap


@pytest.mark.fault(
    "more entries than the buffer caps; a NaN timestamp; a wrong-size frame",
    expected="the oldest are dropped and counted; ValueError for the timestamp and the frame; NaN "
    "phases are accepted (health)",
)
def test_caps_and_validation() -> None:
    asm = WindowAssembler("f", SPEC, max_samples=64, max_frames=16)
    _stream(asm, 40.0)
    assert len(asm._t) == 64 and len(asm._tf) == 16
    assert asm.dropped == {"current": 16, "camera": 64}
    with pytest.raises(ValueError, match="finite"):
        asm.add_current(float("nan"), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\(64, 64, 3\) uint8"):
        asm.add_frame(T0, np.zeros((32, 32, 3), np.uint8))
    assert asm.add_current(T0 + 100.0, float("nan"), 1.0, 1.0) == "added"  # NaN is health
    with pytest.raises(ValueError, match="whole number"):
        WindowAssembler("f", WindowSpec(window_seconds=15.0))
    with pytest.raises(ValueError, match="max_samples"):
        WindowAssembler("f", SPEC, max_frames=2)


@pytest.mark.fault(
    "a camera that joins 40 s after the current",
    expected="camera `missing`, not `stale`, until its first frame, in batch and live",
)
def test_a_stream_that_starts_later_is_missing_not_stale_in_batch_and_live() -> None:
    for pop_every in (None, 5):
        asm = WindowAssembler("f", SPEC)
        rng = np.random.default_rng(0)
        got: list[Window] = []
        for k in range(2 * 60):
            t = T0 + k / 2
            asm.add_current(t, *(15000.0 + 1500.0 * rng.standard_normal(3)))
            if t >= T0 + 40.0:  # the camera joins 40 s late
                asm.add_frame(t, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            if pop_every and k % pop_every == 0:
                got += asm.pop_closed()
        health = {w.end - T0: w.health("camera") for w in got + asm.pop_closed()}
        assert health[38.0] == "missing" and health[40.0] == "missing"  # no frame yet
        assert health[56.0] == "ok"
