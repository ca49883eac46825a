"""`furnace scorecard`: the event rules on hand-built cases, the replay's window cadence against
the consumer's, and one end-to-end run on a tiny simulated dataset (models/default)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from furnace.scorecard import (
    AFTER_END_S,
    Entries,
    EpisodeRecord,
    FurnaceTruth,
    ServiceSettings,
    Trace,
    TruthEvent,
    assemble,
    event_counts,
    match_events,
    window_arrays,
)
from simulator.config import CLASS_INDEX
from tests.helpers.cli import run_cli

T0 = 1_767_225_600.0


def _truth(
    vis_cur: list[tuple[float, float]] = (),
    vis_cam: list[tuple[float, float]] = (),
    events: list[tuple[str, float, float]] = (("eruption", 200.0, 260.0),),
) -> FurnaceTruth:
    """600 s of one furnace; visibility on in the given [start, stop) spans (seconds)."""
    t_cur = np.arange(0.0, 600.0, 0.5)
    t_frame = np.arange(0.0, 600.0, 0.5) + 0.25
    label = np.zeros(t_cur.size, np.int64)
    for cond, onset, end in events:
        label[(t_cur >= onset) & (t_cur < end)] = CLASS_INDEX[cond]

    def flags(t: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
        out = np.zeros(t.size, bool)
        for a, b in spans:
            out |= (t >= a) & (t < b)
        return out

    return FurnaceTruth(
        name="f",
        furnace_id="f0",
        t0=T0,
        t_cur=t_cur,
        label=label,
        vis_cur=flags(t_cur, list(vis_cur)),
        t_frame=t_frame,
        vis_frame=flags(t_frame, list(vis_cam)),
        events=[{"condition": c, "onset_s": a, "end_s": b} for c, a, b in events],
    )


def _ep(opened_s: float, condition: str = "eruption", **kw: object) -> EpisodeRecord:
    closed = kw.pop("closed_s", opened_s + 20.0)
    return EpisodeRecord(
        furnace_id=str(kw.pop("furnace_id", "f0")),
        opened_at=T0 + opened_s,
        condition=condition,
        final_condition=str(kw.pop("final", condition)),
        closed_at=None if closed is None else T0 + float(closed),  # type: ignore[arg-type]
    )


def _event(visible_s: float = 10.0, first: float | None = 210.0) -> TruthEvent:
    return TruthEvent(
        "f0",
        "eruption",
        T0 + 200.0,
        T0 + 260.0,
        visible_s=visible_s,
        first_visible=None if first is None else T0 + first,
    )


# --------------------------------------------------------------------------- visibility


def test_an_event_is_visible_after_three_seconds_of_its_sensors_flags() -> None:
    # 2.5 s of current flags inside the event: not visible; 3 s: visible
    short = _truth(vis_cur=[(210.0, 212.5)]).events_for(("current",))[0]
    assert short.visible_s == pytest.approx(2.5)
    ok = _truth(vis_cur=[(210.0, 213.0)]).events_for(("current",))[0]
    assert ok.visible_s == pytest.approx(3.0) and ok.first_visible == pytest.approx(T0 + 210.0)
    (o_short, o_ok), _ = match_events([short, ok], [])
    assert not o_short.visible and o_ok.visible
    # flags outside the event do not count
    outside = _truth(vis_cur=[(100.0, 150.0), (300.0, 400.0)]).events_for(("current",))[0]
    assert outside.visible_s == 0.0 and outside.first_visible is None


def test_visibility_follows_the_settings_sensors() -> None:
    truth = _truth(vis_cur=[(230.0, 240.0)], vis_cam=[(205.0, 207.0)])
    cur = truth.events_for(("current",))[0]
    cam = truth.events_for(("camera",))[0]
    both = truth.events_for(("current", "camera"))[0]
    assert cur.visible_s == pytest.approx(10.0) and cur.first_visible == pytest.approx(T0 + 230)
    assert cam.visible_s == pytest.approx(2.0)  # camera alone: 2 s, not visible
    # both: either sensor, and the camera makes it visible earlier
    assert both.visible_s == pytest.approx(12.0) and both.first_visible == pytest.approx(T0 + 205)
    outcomes, _ = match_events([cur, cam, both], [])
    assert [o.visible for o in outcomes] == [True, False, True]


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("opened_s", "alerted"),
    [
        (199.0, False),  # before the onset
        (200.0, True),  # at the onset
        (260.0, True),  # at the end
        (260.0 + AFTER_END_S, True),  # one window after the end
        (260.0 + AFTER_END_S + 2.0, False),  # later
    ],
)
def test_alerted_means_an_episode_opens_between_onset_and_end_plus_16_s(
    opened_s: float, alerted: bool
) -> None:
    (out,), false = match_events([_event()], [_ep(opened_s)])
    assert out.alerted is alerted
    assert (len(false) == 0) is alerted  # an episode outside every event is false


def test_an_episode_open_before_the_onset_does_not_alert_it() -> None:
    (out,), false = match_events([_event()], [_ep(150.0, closed_s=300.0)])
    assert not out.alerted and out.inside_open_episode and len(false) == 1
    assert event_counts([out])["inside_open_episode"] == 1


def test_named_uses_the_first_alerting_episode_at_opening() -> None:
    (named,), _ = match_events([_event()], [_ep(220.0, "eruption", final="overheating")])
    assert named.named and not named.named_final
    (wrong,), _ = match_events([_event()], [_ep(220.0, "overheating"), _ep(250.0, "eruption")])
    assert wrong.alerted and not wrong.named  # the first episode names it wrongly
    assert wrong.episode is not None and wrong.episode.opened_at == T0 + 220.0


def test_delay_is_from_the_first_visible_instant_and_counts_visible_events_only() -> None:
    events = [_event(first=210.0), _event(visible_s=1.0, first=230.0)]  # second: invisible
    outcomes, _ = match_events(events, [_ep(232.0)])
    assert outcomes[0].delay_s == pytest.approx(22.0)
    assert outcomes[1].alerted and outcomes[1].delay_s is None
    counts = event_counts(outcomes)
    assert counts["events"] == 2 and counts["visible"] == 1
    assert counts["alerted"] == 1 and counts["alerted_invisible"] == 1
    assert counts["median_delay_from_visible_s"] == pytest.approx(22.0)
    # an alert before the flags see it gives a negative delay
    (early,), _ = match_events([_event(first=240.0)], [_ep(220.0)])
    assert early.delay_s == pytest.approx(-20.0)


def test_false_episodes_are_matched_per_furnace() -> None:
    other = _ep(220.0, furnace_id="f1")  # inside f0's event window, but on f1
    outcomes, false = match_events([_event()], [_ep(400.0), other, _ep(230.0)])
    assert outcomes[0].alerted
    assert [(e.furnace_id, e.opened_at - T0) for e in false] == [("f0", 400.0), ("f1", 220.0)]


def test_window_truth_is_the_label_at_the_window_end_and_the_oracle_needs_visibility() -> None:
    truth = _truth(vis_cur=[(220.0, 240.0)])
    trace = Trace(
        ends=[T0 + e for e in (210.0, 230.0, 260.0)],
        condition=["normal", "eruption", "unknown"],
    )
    y_true, y_pred, oracle = window_arrays(trace, truth, ("current",))
    erupt = CLASS_INDEX["eruption"]
    # 260.0 is the first sample after the event: normal
    assert y_true.tolist() == [erupt, erupt, 0]
    assert y_pred.tolist() == [0, erupt, -1]
    assert oracle.tolist() == [0, erupt, 0]  # visible at 230 only
    _, _, cam = window_arrays(trace, truth, ("camera",))
    assert cam.tolist() == [0, 0, 0]


# --------------------------------------------------------------------------- replay


def _entries(seconds: float = 240.0, skew_at: float = 150.0) -> Entries:
    """Synthetic streams as the replayer publishes them: current at 2 Hz, PNG frames at 2 fps,
    the camera clock 4 s ahead from `skew_at` on."""
    from simulator.png import encode_png

    rng = np.random.default_rng(0)
    t = np.arange(0.0, seconds, 0.5)
    values = rng.normal(15000, 900, (t.size, 3)).tolist()
    out = Entries([], [], [])
    for x, (a, b, c) in zip(t.tolist(), values, strict=True):
        frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        skew = 4.0 if x >= skew_at else 0.0
        out.modality += ["current", "camera"]
        out.fields += [
            {"ts": f"{T0 + x:.3f}", "a": f"{a:.2f}", "b": f"{b:.2f}", "c": f"{c:.2f}"},
            {"ts": f"{T0 + x + skew:.3f}", "image": encode_png(frame, level=1)},
        ]
        out.arrival += [T0 + x, T0 + x]
    return out


def test_windows_close_as_the_consumer_closes_them_entry_by_entry() -> None:
    """assemble() pops only when a window is due; popping after every entry (a consumer
    reading one entry at a time) gives the same windows, skew and late entries included."""
    from service.reader import feed_entry
    from service.types import WindowSpec
    from service.windows import WindowAssembler

    entries, spec, settings = _entries(), WindowSpec(), ServiceSettings()
    counts: dict[str, int] = {}
    fast = []
    for batch in assemble(entries, "f0", spec, ("current", "camera"), settings, counts):
        fast.extend(batch)
    asm = WindowAssembler("f0", spec, grace_seconds=1.0, staleness_seconds=5.0)
    slow = []
    for modality, fields, now in zip(
        entries.modality, entries.fields, entries.arrival, strict=True
    ):
        feed_entry(asm, modality, fields, now, max_image_pixels=4096 * 4096)
        slow.extend(asm.pop_closed())
    assert [w.end for w in fast] == [w.end for w in slow] and len(fast) > 100
    assert [(w.health("current"), w.health("camera")) for w in fast] == [
        (w.health("current"), w.health("camera")) for w in slow
    ]
    # frames ahead close windows before their current arrives: late current, camera decides
    assert counts["late_current"] == asm.late["current"] > 0 and counts["dead"] == 0
    assert any(w.health("current") != "ok" and w.health("camera") == "ok" for w in fast)
    for a, b in zip(fast, slow, strict=True):
        for part in ("current", "camera"):
            x, y = getattr(a, part), getattr(b, part)
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(
                    x.x if part == "current" else x.frames, y.x if part == "current" else y.frames
                )
    # current only: no frame is fed, so no window has a camera part
    only = [w for batch in assemble(entries, "f0", spec, ("current",), settings) for w in batch]
    assert only and all(w.camera is None for w in only)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 furnaces x 6 min, both with an event; faults added to the sentinel lists (applied on
    read): the camera of furnace 0 disconnected for 60 s, NaN current on furnace 1."""
    from simulator.config import SimConfig
    from simulator.dataset import RunSpec, generate
    from training.data.fmf_write import write_fmf

    root = tmp_path_factory.mktemp("score") / "data"
    cfg = SimConfig(minutes=6.0, event_free_fraction=0.0)
    write_fmf(generate(RunSpec(seed=3, furnaces=2, config=cfg)), root, progress=False)
    added = {
        0: {"kind": "disconnected", "modality": "camera", "start_s": 200.0, "end_s": 260.0},
        1: {"kind": "nan", "modality": "current", "start_s": 200.0, "end_s": 230.0},
    }
    for i, side in enumerate(sorted((root / "pixel-level" / "sentinel").glob("*.json"))):
        meta = json.loads(side.read_text())
        meta["faults"] = [{"phase": -1, "value": 0.0, "seed": 0, **added[i]}]
        side.write_text(json.dumps(meta))
    return root


def test_scorecard_end_to_end(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run, torch_loaded = run_cli(
        ["scorecard", "--bundle", "default", "--data", str(tiny_data), "--out", str(out)]
    )
    assert run.returncode == 0, run.stderr
    assert not torch_loaded
    assert "| both |" in run.stdout and "| camera_only |" in run.stdout
    card = json.loads((out / "scorecard.json").read_text())
    assert Path(card["bundle"]).name == "default"
    assert set(card["settings"]) == {"both", "current_only", "camera_only"}
    keys = {
        "furnace_hours",
        "events",
        "visible",
        "alerted",
        "named",
        "false_episodes",
        "median_delay_from_visible_s",
        "window_macro_f1",
        "oracle_window_macro_f1",
        "false_episodes_per_10_furnace_hours",
        "per_condition",
    }
    rows = card["settings"]
    for name, row in rows.items():
        assert keys <= set(row), name
        assert row["furnace_hours"] == pytest.approx(0.2)
        assert row["events"] == 2
        assert 0 <= row["named"] <= row["alerted"] <= row["visible"] <= row["events"]
        assert row["false_episodes"] <= row["episodes"]
        assert row["false_episodes_per_10_furnace_hours"] == pytest.approx(
            row["false_episodes"] / 0.2 * 10
        )
        per = row["per_condition"]
        for k in ("events", "visible", "alerted", "named"):
            assert sum(c[k] for c in per.values()) == row[k]
        assert len(row["event_outcomes"]) == row["events"]
        for f1 in (row["window_macro_f1"], row["oracle_window_macro_f1"]):
            assert f1 is None or 0.0 <= f1 <= 1.0
        assert row["windows_decided"] <= row["windows"]
    # health handling: the faults were applied on read
    assert rows["camera_only"]["windows"] < rows["both"]["windows"]  # no frames: no windows
    assert rows["current_only"]["windows_decided"] < rows["current_only"]["windows"]
    page = (out / "scorecard.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_scorecard_one_setting_and_clear_errors(tiny_data: Path, tmp_path: Path) -> None:
    from furnace.cli import main
    from furnace.scorecard import run_scorecard

    card = run_scorecard(
        "default", tiny_data, tmp_path / "one", modalities="current", html_report=False
    )
    assert list(card["settings"]) == ["current_only"]
    assert not (tmp_path / "one" / "scorecard.html").exists()
    assert main(["scorecard", "--data", str(tmp_path / "nowhere"), "--out", "x"]) == 2
    rc = main(["scorecard", "--bundle", "no-such-bundle", "--data", str(tiny_data), "--out", "x"])
    assert rc == 2
