"""`furnace scorecard`: the event-level results an operator sees, through the service's own code.

A simulated dataset (FMF layout with the `sentinel/` extension, docs/data-format.md) is replayed
furnace by furnace the way `furnace replay` publishes it and the stream consumer reads it:

- Observations: `training.data.fmf.read_fmf(apply_faults=True, camera_fps=None)`, i.e. the
  clean dataset with its sensor-fault events applied on read (`simulator.faults.apply_faults`,
  as `simulator.replay` does; faults are never baked into a dataset). Dropped samples and
  frames of a disconnected camera are not fed (the replayer does not publish them), skewed
  timestamps are fed as skewed, NaN / stuck / clipped values and frozen / black / occluded
  frames as observed. Entries go in the replayer's order: true sensor time, current before
  camera at equal times.
- Each entry carries the replayer's fields (`ts` with three decimals, phases with two, "nan";
  frames as PNG) and goes into its assembler through the consumer's own
  `service.reader.feed_entry` (parsing, image decoding, `add_current` / `add_frame`).
- Windows: one `service.windows.WindowAssembler` per furnace and setting, with the service's
  grace and staleness settings, popped as soon as the newest timestamp closes one (what the
  consumer does reading at the live rate: a window every 2 s of sensor time).
- Decisions: `service.engine.Engine.score` (batched; with memory heads, each replay of a
  furnace under a setting with its own empty code history), each detection turned into what the
  alert policy takes by `service.store.alerting_form` and applied in window order with
  `service.alerting.next_state` and the policy the service would run
  (`ServiceSettings.policy`: FURNACE_ALERT_K/N/M where set, else the bundle's calibrated
  `alert_policy`, else 3 of 4 and 3). `score_windows` and `apply_policy` are the two halves;
  `furnace.alert_calibration` reuses them.

Settings: "both" feeds both streams, "current_only" no frames, "camera_only" no current.

Event rules (`match_events`, tested by hand-built cases):
- An event (a condition event of `sentinel/NAME.json`, onset to end) is *visible* to a
  setting when the simulator's visibility flags of that setting's sensors (`vis_cur`,
  `vis_frame`; either of them for "both") are on for at least 3 s in total inside it, counted
  on the 2-Hz current grid (a frame's flag holds until the next frame).
- *Alerted*: an episode opens (its first window end) in [onset, end + 16 s]. The alerting
  episode is the first such episode; *named* when its condition at opening is the event's
  condition (`named_final`: its condition at its close or at the end of the data).
- *Delay from visible*: opening of the alerting episode minus the first visible instant.
- A *false episode* opens outside [onset, end + 16 s] of every event of its furnace.
- `alerted` and `named` count visible events only (alerts on events the flags call invisible
  are in `alerted_invisible`), so alerted <= visible <= events.

Window diagnostics: the truth of a window is the class of the last current sample at or
before its end (the rule of `training.data.make_windows`); the service's prediction is the
detection's condition ("unknown", a miss, when no modality was usable). The oracle predicts
the true condition where the setting's sensors see it at the window end and normal elsewhere
(docs/experiments.md, "The visibility ceiling"), on the same windows. Macro-F1 is
`training.evaluation.metrics.macro_f1` over all six classes (`_listed`: the conditions with at
least moderate evidence in the setting's sensors, as `furnace evaluate` lists them).

No torch anywhere here: `python -c "import furnace.scorecard, sys; print('torch' in
sys.modules)"` prints False, and so does a whole run (tests/test_scorecard.py).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from simulator.config import CLASS_INDEX, CLASS_NAMES

if TYPE_CHECKING:
    from service.alerting import AlertEpisode, AlertPolicy
    from service.bundle import BundleAlertPolicy
    from service.detection import Detection
    from service.engine import Engine
    from service.types import Window, WindowSpec
    from training.data.fmf import Recording

SETTINGS: dict[str, tuple[str, ...]] = {
    "both": ("current", "camera"),
    "current_only": ("current",),
    "camera_only": ("camera",),
}
CHOICES: dict[str, str] = {"both": "both", "current": "current_only", "camera": "camera_only"}
AFTER_END_S = 16.0  # one window: an episode opening this long after the end still alerts
MIN_VISIBLE_S = 3.0
SCORE_BATCH = 256  # windows per Engine.score call
_COLORS = {
    "normal": "#ffffff",
    "semi_molten": "#d62728",
    "overheating": "#ff7f0e",
    "eruption": "#9467bd",
    "abnormal_exhaust": "#2ca02c",
    "electrode_breakage": "#1f77b4",
    "unknown": "#7f7f7f",
}


# --------------------------------------------------------------------------- event rules


@dataclass(frozen=True)
class TruthEvent:
    """One condition event of one furnace, with its visibility to one setting (Unix s)."""

    furnace_id: str
    condition: str
    onset: float
    end: float
    visible_s: float = 0.0  # seconds the setting's sensors see it inside [onset, end]
    first_visible: float | None = None  # the first instant they do


@dataclass(frozen=True)
class EpisodeRecord:
    """One alert episode as the service opened it (times are window ends, Unix s)."""

    furnace_id: str
    opened_at: float
    condition: str  # at opening
    final_condition: str  # at its close, or at the end of the data when still open
    closed_at: float | None = None
    raised_by: str = ""
    peak_score: float = float("nan")


@dataclass(frozen=True)
class EventOutcome:
    """What the service did about one event."""

    event: TruthEvent
    visible: bool
    alerted: bool  # an episode opened in [onset, end + 16 s] (whether visible or not)
    named: bool
    named_final: bool
    delay_s: float | None  # alerting episode's opening minus the first visible instant
    episode: EpisodeRecord | None  # the alerting episode
    inside_open_episode: bool  # an episode opened before the onset was still open at it


def match_events(
    events: Sequence[TruthEvent],
    episodes: Sequence[EpisodeRecord],
    *,
    after_end_s: float = AFTER_END_S,
    min_visible_s: float = MIN_VISIBLE_S,
) -> tuple[list[EventOutcome], list[EpisodeRecord]]:
    """Match events and episodes of any furnaces by the scorecard's rules (module docstring).

    Returns:
        (one outcome per event, in the given order; the false episodes, in the given order).
    """
    outcomes = []
    for ev in events:
        mine = sorted(
            (e for e in episodes if e.furnace_id == ev.furnace_id), key=lambda e: e.opened_at
        )
        hits = [e for e in mine if ev.onset <= e.opened_at <= ev.end + after_end_s]
        first = hits[0] if hits else None
        visible = ev.visible_s >= min_visible_s - 1e-9 and ev.first_visible is not None
        delay = None
        if first is not None and visible and ev.first_visible is not None:
            delay = first.opened_at - ev.first_visible
        inside = any(
            e.opened_at < ev.onset and (e.closed_at is None or e.closed_at >= ev.onset)
            for e in mine
        )
        outcomes.append(
            EventOutcome(
                event=ev,
                visible=visible,
                alerted=first is not None,
                named=first is not None and first.condition == ev.condition,
                named_final=first is not None and first.final_condition == ev.condition,
                delay_s=delay,
                episode=first,
                inside_open_episode=inside,
            )
        )
    false = [
        e
        for e in episodes
        if not any(
            ev.furnace_id == e.furnace_id and ev.onset <= e.opened_at <= ev.end + after_end_s
            for ev in events
        )
    ]
    return outcomes, false


def event_counts(outcomes: Sequence[EventOutcome]) -> dict[str, Any]:
    """events, visible, alerted and named (both among visible events), alerted_invisible,
    named_final, inside_open_episode (visible, not alerted, inside an earlier episode) and
    the median delay from visible (None without an alerted visible event)."""
    vis = [o for o in outcomes if o.visible]
    delays = [o.delay_s for o in vis if o.alerted and o.delay_s is not None]
    return {
        "events": len(outcomes),
        "visible": len(vis),
        "alerted": sum(o.alerted for o in vis),
        "named": sum(o.named for o in vis),
        "named_final": sum(o.named_final for o in vis),
        "alerted_invisible": sum(o.alerted for o in outcomes if not o.visible),
        "inside_open_episode": sum(o.inside_open_episode and not o.alerted for o in vis),
        "median_delay_from_visible_s": float(np.median(delays)) if delays else None,
    }


# --------------------------------------------------------------------------- truth


@dataclass
class FurnaceTruth:
    """One recording's ground truth from `sentinel/` (clean times, seconds since `t0`)."""

    name: str
    furnace_id: str
    t0: float  # Unix seconds of t = 0
    t_cur: NDArray[np.float64]  # (N,) 2-Hz grid
    label: NDArray[np.int64]  # (N,) class index
    vis_cur: NDArray[np.bool_]  # (N,)
    t_frame: NDArray[np.float64]  # (F,)
    vis_frame: NDArray[np.bool_]  # (F,)
    events: list[dict[str, Any]]  # condition, onset_s, end_s (and the simulator's details)
    faults: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dt(self) -> float:
        return float(np.median(np.diff(self.t_cur))) if len(self.t_cur) > 1 else 0.5

    @property
    def duration_s(self) -> float:
        return float(self.t_cur[-1] - self.t_cur[0] + self.dt) if len(self.t_cur) else 0.0

    def visibility(self, modalities: Sequence[str]) -> NDArray[np.bool_]:
        """(N,) on the current grid: the setting's sensors see the labelled condition."""
        vis = np.zeros(len(self.t_cur), bool)
        if "current" in modalities:
            vis |= self.vis_cur
        if "camera" in modalities and len(self.t_frame):
            j = np.searchsorted(self.t_frame, self.t_cur + 1e-6, side="right") - 1
            vis |= np.where(j >= 0, self.vis_frame[np.clip(j, 0, None)], False)
        return vis

    def at(self, ends: NDArray[np.float64]) -> NDArray[np.int64]:
        """Index of the last current sample at or before each window end (Unix s)."""
        i = np.searchsorted(self.t_cur, ends - self.t0 + 1e-6, side="right") - 1
        return np.clip(i, 0, len(self.t_cur) - 1)

    def events_for(self, modalities: Sequence[str]) -> list[TruthEvent]:
        vis = self.visibility(modalities)
        out = []
        for ev in self.events:
            inside = (self.t_cur >= ev["onset_s"]) & (self.t_cur <= ev["end_s"]) & vis
            idx = np.flatnonzero(inside)
            out.append(
                TruthEvent(
                    furnace_id=self.furnace_id,
                    condition=str(ev["condition"]),
                    onset=self.t0 + float(ev["onset_s"]),
                    end=self.t0 + float(ev["end_s"]),
                    visible_s=float(idx.size * self.dt),
                    first_visible=self.t0 + float(self.t_cur[idx[0]]) if idx.size else None,
                )
            )
        return out


def recording_names(data: str | Path) -> list[str]:
    """The recordings of a dataset that carry the sentinel extension (sorted)."""
    from training.data.fmf import resolve_root

    root = resolve_root(data)
    names = sorted(p.name.split(".")[0] for p in (root / "videos").glob("*.mat"))
    if not names:
        msg = f"{root}: no videos/*.mat"
        raise ValueError(msg)
    missing = [n for n in names if not (root / "sentinel" / f"{n}.json").exists()]
    if missing:
        msg = (
            f"{root}: no sentinel/{missing[0]}.json: the scorecard needs simulated data with "
            "condition events and visibility flags (furnace simulate --out DIR)"
        )
        raise ValueError(msg)
    return names


def load_truth(data: str | Path, name: str) -> FurnaceTruth:
    from training.data.fmf import resolve_root

    side = resolve_root(data) / "sentinel" / name
    meta = json.loads(side.with_suffix(".json").read_text())
    with np.load(side.with_suffix(".npz")) as a:
        arrays = {k: a[k] for k in ("t_cur", "label_cur", "vis_cur", "t_frame", "vis_frame")}
    return FurnaceTruth(
        name=name,
        furnace_id=str(meta["furnace_id"]),
        t0=float(meta["start_epoch"]),
        t_cur=arrays["t_cur"].astype(np.float64),
        label=arrays["label_cur"].astype(np.int64),
        vis_cur=arrays["vis_cur"].astype(bool),
        t_frame=arrays["t_frame"].astype(np.float64),
        vis_frame=arrays["vis_frame"].astype(bool),
        events=list(meta["events"]),
        faults=list(meta.get("faults", [])),
    )


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class ServiceSettings:
    """The `furnace serve` settings the scorecard's code path depends on."""

    grace_seconds: float = 1.0
    staleness_seconds: float = 5.0
    alert_k: int | None = None  # None: FURNACE_ALERT_K unset (the bundle's, else 3)
    alert_n: int | None = None
    alert_m: int | None = None
    max_image_pixels: int = 4096 * 4096

    def policy(self, bundle: BundleAlertPolicy | None = None) -> AlertPolicy:
        """The service's rule (`service.settings.Settings.alert_policy`): FURNACE_ALERT_K/N/M
        where set, else the bundle's calibrated `alert_policy`, else 3 of 4 and 3.
        """
        from service.alerting import resolve_policy

        return resolve_policy(bundle, k=self.alert_k, n=self.alert_n, m=self.alert_m)


def service_settings(bundle: str) -> tuple[Path, ServiceSettings]:
    """The bundle folder as `FURNACE_BUNDLE` resolves it (a name under FURNACE_MODELS_DIR,
    models/ by default, or a path) and the FURNACE_* settings the service would run with.

    Raises:
        ValueError: the FURNACE_* environment does not validate.
    """
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        s = Settings(auth_disabled=True)  # keys only guard HTTP routes, which are not used
    except ValidationError as exc:
        msg = f"the FURNACE_* settings do not validate: {exc}"
        raise ValueError(msg) from exc
    chosen = ServiceSettings(
        s.grace_seconds,
        s.staleness_seconds,
        s.alert_k,
        s.alert_n,
        s.alert_m,
        s.max_image_pixels,
    )
    return s.bundle_path(bundle), chosen


def load_furnace(data: str | Path, name: str, spec: WindowSpec) -> tuple[FurnaceTruth, Entries]:
    """One recording's truth and the entries `furnace replay` would publish for it (sensor
    faults applied on read).
    """
    from training.data.fmf import read_fmf

    truth = load_truth(data, name)
    (rec,) = read_fmf(
        data, names=[name], camera_fps=None, apply_faults=True, frame_px=spec.frame_px
    )
    return truth, observed_entries(rec, truth)


@dataclass
class Entries:
    """One furnace's stream entries as `simulator.replay` publishes them, in its order."""

    modality: list[str]  # "current" | "camera"
    fields: list[dict[str, Any]]  # the entry's fields: ts, a, b, c or ts, image (PNG)
    arrival: list[float]  # Unix s the entry is published at (its true sensor time)


def stream_entries(
    ts_cur: NDArray[np.float64],
    current: NDArray[np.float32],
    ts_frame: NDArray[np.float64],
    frames: NDArray[np.uint8],
    arrive_cur: NDArray[np.float64] | None = None,
    arrive_frame: NDArray[np.float64] | None = None,
) -> Entries:
    """The entries a gateway publishes for samples and frames stamped `ts_*` (Unix s), as
    `simulator.replay` writes them: values with two decimals ("nan" for a NaN sample), frames
    as PNG (level 1), ordered by arrival (default: the stamps), current before camera at equal
    times."""
    from simulator.png import encode_png

    arrive_cur = ts_cur if arrive_cur is None else arrive_cur
    arrive_frame = ts_frame if arrive_frame is None else arrive_frame
    fields: list[dict[str, Any]] = []
    for ts, row in zip(ts_cur.tolist(), current.tolist(), strict=True):
        a, b, c = (f"{x:.2f}" for x in row)
        fields.append({"ts": f"{ts:.3f}", "a": a, "b": b, "c": c})
    for ts, frame in zip(ts_frame.tolist(), frames, strict=True):
        image = encode_png(np.ascontiguousarray(frame), level=1)
        fields.append({"ts": f"{ts:.3f}", "image": image})
    t_pub = np.concatenate([arrive_cur, arrive_frame])
    camera = np.r_[np.zeros(len(ts_cur), bool), np.ones(len(ts_frame), bool)]
    order = np.lexsort((camera, t_pub)).tolist()
    return Entries(
        ["camera" if camera[i] else "current" for i in order],
        [fields[i] for i in order],
        [float(t_pub[i]) for i in order],
    )


def observed_entries(rec: Recording, truth: FurnaceTruth) -> Entries:
    """The entries `simulator.replay` publishes for a recording read with faults applied:
    present samples and frames only, `ts` with any skew, ordered by true sensor time
    (`stream_entries`)."""
    n_cur, n_frame = len(rec.t_cur), len(rec.t_frame)
    if n_cur != len(truth.t_cur) or n_frame != len(truth.t_frame):
        msg = f"{rec.name}: observed and sentinel arrays differ in length"
        raise ValueError(msg)
    cur_on = np.ones(n_cur, bool) if rec.cur_present is None else rec.cur_present
    cam_on = np.ones(n_frame, bool) if rec.frame_present is None else rec.frame_present
    ci, fi = np.flatnonzero(cur_on), np.flatnonzero(cam_on)
    return stream_entries(
        truth.t0 + rec.t_cur[ci],
        rec.current[ci],
        truth.t0 + rec.t_frame[fi],
        rec.frames[fi],
        truth.t0 + truth.t_cur[ci],
        truth.t0 + truth.t_frame[fi],
    )


def assemble(
    entries: Entries,
    furnace_id: str,
    spec: WindowSpec,
    modalities: Sequence[str],
    settings: ServiceSettings,
    counts: dict[str, int] | None = None,
) -> Iterator[list[Window]]:
    """Feed the setting's entries to a fresh assembler with the consumer's `feed_entry`,
    yielding windows as they close.

    A window is popped as soon as the newest timestamp reaches its end + grace, which is what
    the consumer's per-read `pop_closed` gives at the live rate (checked here per entry;
    `pop_closed` does nothing before that moment). `counts` accumulates the assembler's late
    entries per modality (skewed timestamps behind a closed window) and dead letters."""
    from service.entries import PoisonEntryError
    from service.reader import feed_entry
    from service.windows import WindowAssembler

    asm = WindowAssembler(
        furnace_id,
        spec,
        grace_seconds=settings.grace_seconds,
        staleness_seconds=settings.staleness_seconds,
    )
    dead = 0
    due = spec.hop_seconds + settings.grace_seconds - 1e-6
    rows = zip(entries.modality, entries.fields, entries.arrival, strict=True)
    for modality, fields, now in rows:
        if modality not in modalities:
            continue
        try:
            feed_entry(asm, modality, fields, now, max_image_pixels=settings.max_image_pixels)
        except PoisonEntryError:
            dead += 1  # the consumer dead-letters it; a simulated stream never has one
            continue
        last = asm.last_closed_end
        if last is None or asm.newest >= last + due:
            closed = asm.pop_closed()
            if closed:
                yield closed
    if counts is not None:
        for m, n in asm.late.items():
            counts[f"late_{m}"] = counts.get(f"late_{m}", 0) + n
        counts["dead"] = counts.get("dead", 0) + dead


@dataclass
class Trace:
    """One furnace under one setting: per-window decisions and the episodes."""

    ends: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)  # NaN: no usable modality
    threshold: list[float] = field(default_factory=list)
    abnormal: list[bool] = field(default_factory=list)
    condition: list[str] = field(default_factory=list)  # "unknown" when undecided
    episodes: list[EpisodeRecord] = field(default_factory=list)


def score_windows(
    engine: Engine, windows: Iterable[list[Window]], batch: int = SCORE_BATCH
) -> Iterator[Detection]:
    """`Engine.score` over windows as they close, in batches of at least `batch` (the
    closed windows of one pop stay together), detections in window order.

    Each call is one independent replay: with memory heads it scores with its own, empty
    code history (`Engine.new_history`), with per-furnace adaptation its own score history
    (`Engine.new_adapter`), so replaying a furnace again (another setting,
    another recording of the same furnace id) never reads an earlier pass's windows.
    """
    history, adapter = engine.new_history(), engine.new_adapter()
    pending: list[Window] = []
    for closed in windows:
        pending.extend(closed)
        if len(pending) >= batch:
            yield from engine.score(pending, history=history, adapter=adapter)
            pending = []
    if pending:
        yield from engine.score(pending, history=history, adapter=adapter)


def decide(
    engine: Engine,
    windows: Iterator[list[Window]],
    furnace_id: str,
    policy: AlertPolicy,
    batch: int = SCORE_BATCH,
) -> Trace:
    """Score windows in batches and run the alert policy over the detections in order."""
    return apply_policy(score_windows(engine, windows, batch), furnace_id, policy)


def apply_policy(detections: Iterable[Detection], furnace_id: str, policy: AlertPolicy) -> Trace:
    """Run one furnace's detections (window order) through `service.store.alerting_form` and
    `service.alerting.next_state`, as the service's commit does; record windows and episodes
    (an episode still open at the end has `closed_at` None).
    """
    from service.alerting import AlertState, next_state
    from service.store import alerting_form

    trace = Trace()
    state = AlertState.initial(furnace_id)
    opened: dict[str, EpisodeRecord] = {}
    for det in detections:
        view = alerting_form(det)  # what the service's commit hands to next_state
        decided = bool(view.modalities)
        trace.ends.append(float(det.window_end))
        trace.score.append(float(det.score) if decided else float("nan"))
        trace.threshold.append(float(det.threshold))
        trace.abnormal.append(bool(view.is_abnormal))
        trace.condition.append(str(det.condition) if decided else "unknown")
        state, events = next_state(state, view, policy)
        for ev in events:
            ep = ev.episode
            if ev.kind == "opened":
                opened[ep.id] = EpisodeRecord(furnace_id, ep.opened_at, ep.condition, ep.condition)
            opened[ep.id] = _latest(opened[ep.id], ep)
    if state.episode is not None:  # still open at the end of the data (closed_at is None)
        opened[state.episode.id] = _latest(opened[state.episode.id], state.episode)
    trace.episodes = sorted(opened.values(), key=lambda e: e.opened_at)
    return trace


def _latest(record: EpisodeRecord, ep: AlertEpisode) -> EpisodeRecord:
    """The record as of the episode's latest event: condition, close, origin and peak."""
    return replace(
        record,
        final_condition=ep.condition,
        closed_at=ep.closed_at,
        raised_by=ep.raised_by,
        peak_score=ep.peak_score,
    )


# --------------------------------------------------------------------------- the scorecard


def listed_conditions(modalities: Sequence[str]) -> list[str]:
    """All six classes for both sensors, else normal plus the conditions with at least
    moderate evidence in the sensor, as `furnace evaluate` lists them."""
    from training.evaluation.metrics import conditions_with_evidence

    return list(CLASS_NAMES) if len(modalities) > 1 else conditions_with_evidence(modalities)


def window_arrays(
    trace: Trace, truth: FurnaceTruth, modalities: Sequence[str]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(truth, service prediction, oracle prediction) per window; -1 is "unknown"."""
    ends = np.asarray(trace.ends, np.float64)
    idx = truth.at(ends)
    y_true = truth.label[idx]
    y_pred = np.asarray([CLASS_INDEX.get(c, -1) for c in trace.condition], np.int64)
    seen = truth.visibility(modalities)[idx]
    oracle = np.where(seen & (y_true != 0), y_true, 0).astype(np.int64)
    return y_true, y_pred.reshape(-1), oracle


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarise(
    modalities: Sequence[str],
    truths: Sequence[FurnaceTruth],
    traces: Sequence[Trace],
    entry_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One setting's row of scorecard.json from every furnace's truth and trace."""
    from training.evaluation.metrics import macro_f1

    events = [ev for t in truths for ev in t.events_for(modalities)]
    episodes = [ep for tr in traces for ep in tr.episodes]
    outcomes, false = match_events(events, episodes)
    hours = sum(t.duration_s for t in truths) / 3600.0
    parts = [window_arrays(tr, t, modalities) for t, tr in zip(truths, traces, strict=True)]
    y_true = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    y_pred = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    oracle = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    listed = listed_conditions(modalities)
    counts = event_counts(outcomes)
    row: dict[str, Any] = {
        "furnace_hours": hours,
        "events": counts["events"],
        "visible": counts["visible"],
        "alerted": counts["alerted"],
        "named": counts["named"],
        "false_episodes": len(false),
        "median_delay_from_visible_s": counts["median_delay_from_visible_s"],
        "window_macro_f1": _finite_or_none(macro_f1(y_true, y_pred, CLASS_NAMES)),
        "oracle_window_macro_f1": _finite_or_none(macro_f1(y_true, oracle, CLASS_NAMES)),
        "false_episodes_per_10_furnace_hours": len(false) / hours * 10.0 if hours else None,
        "episodes": len(episodes),
        "named_final": counts["named_final"],
        "alerted_invisible": counts["alerted_invisible"],
        "inside_open_episode": counts["inside_open_episode"],
        "window_macro_f1_listed": _finite_or_none(macro_f1(y_true, y_pred, listed)),
        "oracle_window_macro_f1_listed": _finite_or_none(macro_f1(y_true, oracle, listed)),
        "listed_conditions": listed,
        "windows": int(y_true.size),
        "windows_decided": int((y_pred >= 0).sum()),
        "late_entries": {
            m: (entry_counts or {}).get(f"late_{m}", 0) for m in ("current", "camera")
        },
        "dead_letters": (entry_counts or {}).get("dead", 0),
    }
    per: dict[str, dict[str, Any]] = {}
    for cond in CLASS_NAMES[1:]:
        mine = [o for o in outcomes if o.event.condition == cond]
        if mine:
            c = event_counts(mine)
            per[cond] = {k: c[k] for k in ("events", "visible", "alerted", "named")}
            per[cond]["median_delay_from_visible_s"] = c["median_delay_from_visible_s"]
    row["per_condition"] = per
    t0 = {t.furnace_id: t.t0 for t in truths}
    row["event_outcomes"] = [
        {
            "furnace_id": o.event.furnace_id,
            "condition": o.event.condition,
            "onset_s": o.event.onset - t0[o.event.furnace_id],
            "end_s": o.event.end - t0[o.event.furnace_id],
            "visible_s": o.event.visible_s,
            "visible": o.visible,
            "alerted": o.alerted,
            "named": o.named,
            "episode_condition": None if o.episode is None else o.episode.condition,
            "delay_from_visible_s": o.delay_s,
            "inside_open_episode": o.inside_open_episode,
        }
        for o in outcomes
    ]
    false_ids = {(e.furnace_id, e.opened_at) for e in false}
    row["episode_list"] = [
        {
            "furnace_id": e.furnace_id,
            "opened_s": e.opened_at - t0[e.furnace_id],
            "closed_s": None if e.closed_at is None else e.closed_at - t0[e.furnace_id],
            "condition": e.condition,
            "final_condition": e.final_condition,
            "raised_by": e.raised_by,
            "false": (e.furnace_id, e.opened_at) in false_ids,
        }
        for e in episodes
    ]
    return row


def run_scorecard(
    bundle: str,
    data: str | Path,
    out: str | Path,
    *,
    modalities: str | None = None,
    progress: bool = False,
    html_report: bool = True,
) -> dict[str, Any]:
    """Replay `data` through the service's code path and write OUT/scorecard.json and .html.

    Args:
        bundle: a bundle folder, or a name under models/ (as FURNACE_BUNDLE).
        data: a simulated dataset (FMF layout with `sentinel/`).
        out: output folder.
        modalities: "both", "current" or "camera"; None runs all three settings.
        progress: a tqdm bar over furnaces.
        html_report: also write scorecard.html (timelines per furnace).

    Returns:
        The scorecard (what scorecard.json holds).

    Raises:
        ValueError: an unknown setting, a dataset without the sentinel extension, a bundle
            that does not verify (`service.bundle.BundleError`).
        FileNotFoundError: the bundle folder does not exist.
    """
    from tqdm import tqdm

    from service.engine import Engine

    if modalities is not None and modalities not in CHOICES:
        msg = f"--modalities must be one of {', '.join(CHOICES)}, got {modalities!r}"
        raise ValueError(msg)
    chosen = list(SETTINGS) if modalities is None else [CHOICES[modalities]]
    path, settings = service_settings(bundle)
    if not path.is_dir():
        msg = f"bundle folder {path} does not exist"
        raise FileNotFoundError(msg)
    engine = Engine(path)
    spec = engine.manifest.window
    names = recording_names(data)
    truths: list[FurnaceTruth] = []
    traces: dict[str, list[Trace]] = {s: [] for s in chosen}
    counts: dict[str, dict[str, int]] = {s: {} for s in chosen}
    policy = settings.policy(engine.manifest.alert_policy)
    t_start = time.perf_counter()
    for name in tqdm(names, desc="scorecard", unit="furnace", disable=not progress):
        truth, entries = load_furnace(data, name, spec)
        truths.append(truth)
        for setting in chosen:
            mods = SETTINGS[setting]
            windows = assemble(entries, truth.furnace_id, spec, mods, settings, counts[setting])
            traces[setting].append(decide(engine, windows, truth.furnace_id, policy))
    result: dict[str, Any] = {
        "bundle": str(path),
        "model_version": engine.model_version,
        "fusion": engine.manifest.thresholds.fusion,
        "data": str(data),
        "furnaces": [t.furnace_id for t in truths],
        "service_settings": settings.__dict__,
        "alert_policy": {
            "k": policy.k,
            "n": policy.n,
            "m": policy.m,
            "bundle": None
            if engine.manifest.alert_policy is None
            else engine.manifest.alert_policy.__dict__,
        },
        "rules": {
            "min_visible_s": MIN_VISIBLE_S,
            "alerted_until_after_end_s": AFTER_END_S,
            "faults": "applied on read (simulator.faults.apply_faults), as furnace replay",
        },
        "settings": {s: summarise(SETTINGS[s], truths, traces[s], counts[s]) for s in chosen},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scorecard.json").write_text(json.dumps(result, indent=1, allow_nan=False))
    if html_report:
        write_html(out / "scorecard.html", result, truths, traces)
    return result


HEADLINE = (
    ("furnace_hours", "furnace-hours"),
    ("events", "events"),
    ("visible", "visible"),
    ("alerted", "alerted"),
    ("named", "named"),
    ("false_episodes", "false episodes"),
    ("false_episodes_per_10_furnace_hours", "false / 10 furnace-h"),
    ("median_delay_from_visible_s", "median delay from visible [s]"),
    ("window_macro_f1", "window macro-F1"),
    ("oracle_window_macro_f1", "oracle window macro-F1"),
)


def format_table(result: dict[str, Any]) -> str:
    """The headline table as Markdown (what the CLI prints and docs/results.md shows)."""
    head = "| setting | " + " | ".join(label for _, label in HEADLINE) + " |"
    rows = [head, "|---" * (len(HEADLINE) + 1) + "|"]
    for name, row in result["settings"].items():
        cells = [_cell(row[k]) for k, _ in HEADLINE]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


# --------------------------------------------------------------------------- HTML


def write_html(
    path: Path,
    result: dict[str, Any],
    truths: Sequence[FurnaceTruth],
    traces: dict[str, list[Trace]],
) -> None:
    """A self-contained page: the settings table, per-condition counts, one timeline per
    furnace (truth band, visibility, faults; per setting the score, threshold and episodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>furnace scorecard</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
        "margin:.6em 0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.sw{display:inline-block;width:1em;"
        "height:1em;margin:0 .3em 0 1em;vertical-align:middle;border:1px solid #888}</style>",
        "</head><body><h1>Scorecard</h1>",
        f"<p>bundle <code>{esc(result['bundle'])}</code> ({esc(result['model_version'])}, "
        f"fusion {esc(result['fusion'])}); data <code>{esc(result['data'])}</code>; "
        f"{len(truths)} furnaces; alert policy k={result['alert_policy']['k']} of "
        f"n={result['alert_policy']['n']}, close after "
        f"m={result['alert_policy']['m']}.</p>",
        "<p>An event is <b>visible</b> to a setting when its sensors' visibility flags are on "
        f"for &ge; {MIN_VISIBLE_S:g} s inside it; <b>alerted</b> when an episode opens between "
        f"its onset and its end + {AFTER_END_S:g} s (visible events only); <b>named</b> when "
        "that episode's condition at opening is the event's; a <b>false episode</b> opens "
        "outside every event. Delay: from the first visible instant to the opening.</p>",
        "<table><tr><th>setting</th>",
        *(f"<th>{esc(label)}</th>" for _, label in HEADLINE),
        "<th>named (final)</th><th>alerted, invisible</th></tr>",
    ]
    for name, row in result["settings"].items():
        cells = "".join(f"<td>{esc(_cell(row[k]))}</td>" for k, _ in HEADLINE)
        parts.append(
            f"<tr><td>{esc(name)}</td>{cells}<td>{row['named_final']}</td>"
            f"<td>{row['alerted_invisible']}</td></tr>"
        )
    parts.append("</table><h2>Per condition (events / visible / alerted / named)</h2><table>")
    parts.append("<tr><th>condition</th>" + "".join(f"<th>{esc(s)}</th>" for s in traces) + "</tr>")
    for cond in CLASS_NAMES[1:]:
        tds = []
        for s in traces:
            c = result["settings"][s]["per_condition"].get(cond)
            tds.append(
                "<td>—</td>"
                if c is None
                else f"<td>{c['events']} / {c['visible']} / {c['alerted']} / {c['named']}</td>"
            )
        parts.append(f"<tr><td>{esc(cond)}</td>{''.join(tds)}</tr>")
    parts.append("</table><p>")
    for cond in (*CLASS_NAMES[1:], "unknown"):
        parts.append(f"<span class='sw' style='background:{_COLORS[cond]}'></span>{esc(cond)}")
    parts.append(
        "</p><p>Timelines: the top row is the truth (condition band, the events' onset and "
        f"end + {AFTER_END_S:g} s as dotted lines, visibility flags per sensor, sensor faults "
        "hatched); below it, per setting, the decision score (black; gray ticks: no usable "
        "sensor), the threshold (red, dashed) and the episodes (shaded from opening to close, "
        "triangle at opening; an x marks a false one), colored by condition.</p>"
    )
    for i, truth in enumerate(truths):
        fig = _timeline(plt, truth, {s: tr[i] for s, tr in traces.items()})
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=72)
        plt.close(fig)
        png = base64.b64encode(buf.getvalue()).decode()
        parts.append(f"<h3>{esc(truth.furnace_id)} ({esc(truth.name)})</h3>")
        parts.append(f"<img alt='timeline {esc(truth.furnace_id)}' src='data:image/png;base64,")
        parts.append(f"{png}'>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a boolean array."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _timeline(plt: Any, truth: FurnaceTruth, traces: dict[str, Trace]) -> Any:
    from matplotlib.patches import Rectangle

    n = len(traces)
    fig, axes = plt.subplots(
        n + 1,
        1,
        figsize=(12, 1.4 + 1.6 * n),
        sharex=True,
        gridspec_kw={"height_ratios": [1.2] + [1.6] * n},
    )
    tm = truth.t_cur / 60.0
    dt_min = truth.dt / 60.0
    ax = axes[0]
    for cls in range(1, len(CLASS_NAMES)):
        color = _COLORS[CLASS_NAMES[cls]]
        for a, b in _runs(truth.label == cls):
            ax.add_patch(Rectangle((tm[a], 2), tm[b - 1] + dt_min - tm[a], 1, color=color))
    for row, flag in ((1, truth.vis_cur), (0, truth.visibility(("camera",)))):
        shown = flag & (truth.label > 0)
        for a, b in _runs(shown):
            color = _COLORS[CLASS_NAMES[int(truth.label[a])]]
            ax.add_patch(
                Rectangle((tm[a], row + 0.15), tm[b - 1] + dt_min - tm[a], 0.7, color=color)
            )
    for f in truth.faults:
        row = 1 if f["modality"] == "current" else 0
        ax.add_patch(
            Rectangle(
                (f["start_s"] / 60.0, row),
                (f["end_s"] - f["start_s"]) / 60.0,
                1,
                fill=False,
                hatch="///",
                edgecolor="#555555",
                linewidth=0,
            )
        )
    for ev in truth.events:
        for x in (ev["onset_s"] / 60.0, (ev["end_s"] + AFTER_END_S) / 60.0):
            for a in axes:
                a.axvline(x, color=_COLORS[str(ev["condition"])], linestyle=":", linewidth=1)
    ax.set_ylim(0, 3)
    ax.set_yticks([0.5, 1.5, 2.5], ["camera vis", "current vis", "truth"])
    for ax, (setting, tr) in zip(axes[1:], traces.items(), strict=True):
        ends = (np.asarray(tr.ends) - truth.t0) / 60.0
        score = np.asarray(tr.score)
        peak = float(np.nanmax(score)) if np.isfinite(score).any() else 1.0
        top = float(np.clip(peak * 1.1, 2.0, 4.0))
        ax.plot(ends, np.clip(score, 0, top), color="black", linewidth=0.7)
        ax.step(ends, np.asarray(tr.threshold), where="post", color="red", ls="--", lw=0.8)
        undecided = ~np.isfinite(score)
        ax.plot(ends[undecided], np.zeros(undecided.sum()), "|", color="#888888", ms=6)
        for ep in tr.episodes:
            x0 = (ep.opened_at - truth.t0) / 60.0
            x1 = (ep.closed_at - truth.t0) / 60.0 if ep.closed_at is not None else tm[-1]
            color = _COLORS.get(ep.condition, _COLORS["unknown"])
            ax.axvspan(x0, x1, color=color, alpha=0.25, linewidth=0)
            ax.plot([x0], [top * 0.93], marker="v", color=color, ms=8)
            inside = any(
                ev["onset_s"] <= ep.opened_at - truth.t0 <= ev["end_s"] + AFTER_END_S
                for ev in truth.events
            )
            if not inside:
                ax.plot([x0], [top * 0.78], marker="x", color="black", ms=6)
        ax.set_ylim(0, top)
        ax.set_ylabel(f"{setting}\nscore", fontsize=8)
    axes[-1].set_xlabel("minutes since the start of the recording")
    axes[-1].set_xlim(0, truth.duration_s / 60.0)
    fig.tight_layout()
    return fig
