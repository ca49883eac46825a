"""Alert-policy calibration per furnace-hour: thresholds and k-of-n chosen on validation
furnaces for a target false-episode rate (`furnace calibrate-alerts`, and `furnace export`
after writing a bundle).

The per-window thresholds of a bundle (`thresholds`, each at `target_far` false alarms on
validation normal windows) say nothing about how often an operator is paged: k-of-n
hysteresis, correlated windows and sensor faults decide that. This module replays the
bundle's validation furnaces through the scorecard's code path (`furnace.scorecard`: sensor
faults applied on read, the consumer's `feed_entry`, `WindowAssembler`, `Engine.score`) once
per setting (both sensors, current only, camera only), keeps every window's per-modality
results, and then searches alert policies without running the model again:

- A candidate is (k, n), m and five threshold factors, all >= 1: in-ratio current, camera
  and fused (the two-modality rule) and alone current, camera (one modality deciding, its
  partner unhealthy). A probability threshold t becomes 1 - (1 - t) / factor (its margin
  below 1, where a score 1 - p(normal) can never reach, shrinks by the factor: 2 halves
  the margin), a ratio threshold (fused under max-ratio fusion, where scores are
  score / threshold ratios) is multiplied by its factor. Under max-ratio fusion the in-ratio
  factors give the modality thresholds t_m' the ratios divide by; the alone factor f gives
  the single-sensor threshold s_m = 1 - (1 - t_m) / f on the score, written to the bundle
  as the ratio threshold `m_alone = s_m / t_m'` (`Thresholds.current_alone` /
  `camera_alone`), so score / t_m' > m_alone exactly when score > s_m: the fault-time
  threshold rises without touching the modality's weight in the two-modality rule. Under
  averaged fusion `current` and `camera` are only used alone: the alone factors set them
  and the in-ratio current and camera factors stay 1. The base thresholds are the
  per-window ones (`thresholds_per_window` once a bundle was calibrated, so recalibrating
  does not compound; alone ratios 1).
- Each window is re-decided under the candidate's thresholds with `service.engine.decide`
  (the engine's own rule, not a copy), each furnace's detections go through
  `service.store.alerting_form` and the real `service.alerting.next_state`
  (`furnace.scorecard.apply_policy`), and the episodes are matched to the simulator's events
  by the scorecard's rules (`match_events`: visible >= 3 s, alerted when an episode opens in
  onset .. end + 16 s, false when it opens outside every event).
- Choice, in two steps. (1) Alone factors: the current-only setting depends on (k, n) and
  the current alone factor only, the camera-only one on the camera alone factor only; per
  (k, n) each takes its own best alone factor by the rule below applied to that setting
  (under the target: most alerted visible events, then lower median delay, then the
  loosest; none under it: the fewest false episodes). (2) With those fixed, the both-sensor
  setting is searched over the in-ratio current, camera and fused factors (its windows
  decided by one modality, the other unhealthy, use the fixed alone thresholds), and among
  all candidates with false episodes per furnace-hour <= the target in every setting the
  most alerted visible events (summed over the settings) win, then the lower median delay
  from visible (pooled), then the loosest (smallest factor grid positions, then the earlier
  (k, n)), then fewer false episodes. When no candidate meets the target the one with the
  fewest false episodes (then the lowest worst-setting rate, then as above) is taken and
  the result says so (`met_target` False and a `note`). A candidate that would mute a
  sensor is never taken: under max-ratio fusion a modality's ratio score / t_m' is at most
  1 / t_m', so a fused threshold at or above it means that sensor can no longer raise an
  alarm while both are healthy (`muted_modalities`); such candidates are skipped, since
  either sensor raising the alarm is the rule's point. An alone factor of a setting not
  replayed stays at its grid's first value, as does an in-ratio factor when the both-sensor
  setting is not replayed.

Search cost: the both-sensor setting is only searched for the (k, n) whose single-sensor
settings meet the target with their alone factors (every (k, n) only when none does).
Every decision is monotone in the factors (the in-ratio and fused factors only raise t_m'
and the fused ratio threshold, and a one-modality decision is score > s_m whatever t_m'),
so a window clean under the loosest candidate (every factor at its grid minimum; the
thresholds then lowered by a relative 1e-9 so that rounding in score / t_m' against
s_m / t_m' cannot matter) is clean under all; and `next_state` forgets a clean run once it
is max(n, m) windows long (the episode has closed and the k-of-n memory holds only clean
windows), so only the windows abnormal under the loosest thresholds and the max(n, m)
decided windows after each are re-decided and replayed (windows no modality decided change
nothing but `last_window_end`). The chosen candidate is replayed again over every window in
every setting to check that shortcut (`CalibrationError` if it ever disagreed).

A label-free variant (site data, no events) reuses everything: `collect(..., labels=False)`
(or furnaces without events) leaves only false episodes to count, and the choice becomes the
loosest candidate that meets the target.

No torch anywhere here (`'torch' in sys.modules` stays False; tests/test_alert_calibration.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from furnace.scorecard import (
    SETTINGS,
    EpisodeRecord,
    TruthEvent,
    apply_policy,
    match_events,
)
from service.adaptation import (
    DEFAULT_MAX_SHIFT,
    DEFAULT_MIN_WINDOWS,
    DEFAULT_QUANTILE,
    DEFAULT_WINDOW_SECONDS,
    AdaptationSpec,
    ScoreHistory,
)
from service.bundle import RATIO_FLOOR
from service.detection import ModalityResult
from service.signing import SIGNATURE_FILE
from service.types import MODALITIES

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from furnace.scorecard import Entries, ServiceSettings
    from service.alerting import AlertPolicy
    from service.bundle import Thresholds
    from service.detection import Detection
    from service.engine import Engine

logger = logging.getLogger(__name__)

KN_GRID: tuple[tuple[int, int], ...] = ((3, 4), (4, 6), (6, 8), (8, 10), (10, 14))
MARGIN_FACTORS: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
RATIO_FACTORS: tuple[float, ...] = (1.0, 1.01, 1.02, 1.04, 1.07, 1.1)
DEFAULT_M = 3  # `service.alerting.AlertPolicy().m`: closing needs no calibration
DEFAULT_TARGET_PER_10H = 1.0
THRESHOLD_RULE = (
    "probability thresholds (current, camera; fused under averaged fusion): "
    "1 - (1 - t) / factor; ratio threshold (fused under max_ratio): t * factor; "
    "max_ratio alone thresholds: s = 1 - (1 - t) / alone_factor on the score, written as the "
    "ratio s / t' (t' the in-ratio threshold); averaged fusion: current and camera take the "
    "alone factors; t from thresholds_per_window"
)
RATIO_SLACK = 1e-9  # the pruning thresholds sit this much (relative) below the loosest ones


class CalibrationError(RuntimeError):
    """The search's shortcut replay disagreed with a full replay (a bug, never data)."""


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class WindowResult:
    """One decided window as the engine saw it: what `service.engine.decide` needs."""

    window_end: float
    used: tuple[str, ...]  # the usable modalities (health ok), MODALITIES order; never ()
    results: dict[str, ModalityResult]  # per modality (codes and segment scores dropped)


@dataclass
class FurnaceRun:
    """One recording replayed under every setting."""

    furnace_id: str
    name: str
    furnace_hours: float
    windows: dict[str, list[WindowResult]]  # setting -> decided windows in order
    events: dict[str, list[TruthEvent]]  # setting -> events with visibility ([] label-free)
    undecided: dict[str, int] = field(default_factory=dict)  # windows no modality decided


@dataclass
class CalibrationData:
    """Everything the search needs: no model runs after `collect`."""

    thresholds: Thresholds  # the base (per-window) thresholds the factors apply to
    class_names: tuple[str, ...]
    furnaces: list[FurnaceRun]
    settings: tuple[str, ...] = tuple(SETTINGS)
    source: dict[str, Any] = field(default_factory=dict)  # path, furnaces, seconds

    def furnace_hours(self) -> float:
        return sum(f.furnace_hours for f in self.furnaces)


def base_thresholds(manifest_raw: dict[str, Any], thresholds: Thresholds) -> Thresholds:
    """The per-window thresholds a calibration starts from: `thresholds_per_window` of a
    bundle calibrated before, else its `thresholds`; alone ratio thresholds 1 (per window a
    modality deciding alone compares with its own threshold)."""
    thresholds = replace(thresholds, current_alone=1.0, camera_alone=1.0)
    per = manifest_raw.get("thresholds_per_window")
    if not isinstance(per, dict):
        return thresholds
    return replace(
        thresholds,
        current=float(per["current"]),
        camera=float(per["camera"]),
        fused=float(per["fused"]),
    )


def _compact(det: Detection) -> WindowResult:

    return WindowResult(
        window_end=float(det.window_end),
        used=tuple(det.modalities),
        results={
            m: ModalityResult(
                codes=[],
                probs=list(r.probs),
                score=r.score,
                segment_scores=[],
                raw_score=r.raw_score,
            )
            for m, r in det.per_modality.items()
            if m in det.modalities
        },
    )


def collect(
    engine: Engine,
    data: str | Path,
    names: Sequence[str],
    *,
    settings: Sequence[str] = tuple(SETTINGS),
    labels: bool = True,
    base: Thresholds | None = None,
    progress: bool = False,
) -> CalibrationData:
    """Replay recordings `names` of a simulated dataset through the scorecard's code path
    (the service's FURNACE_* grace, staleness and image settings) and keep each decided
    window's per-modality results per setting.

    Args:
        engine: the bundle's engine.
        data: the dataset (FMF layout with `sentinel/`).
        names: recording names (`furnace_recordings`).
        settings: which settings to replay (`furnace.scorecard.SETTINGS` keys).
        labels: False drops the events (label-free: only false episodes count).
        base: the thresholds the factors apply to (default: the engine's manifest's
            `thresholds_per_window`, else `thresholds`).
        progress: a tqdm bar over recordings.
    """
    from tqdm import tqdm

    from furnace.scorecard import load_furnace, service_settings

    _, service = service_settings(str(engine.manifest.folder))
    spec = engine.manifest.window
    t0 = time.perf_counter()
    runs = []
    for name in tqdm(list(names), desc="alert calibration", unit="furnace", disable=not progress):
        truth, entries = load_furnace(data, name, spec)
        run = replay_entries(
            engine, entries, truth.furnace_id, name, truth.duration_s / 3600.0, settings, service
        )
        for setting in settings:
            run.events[setting] = truth.events_for(SETTINGS[setting]) if labels else []
        runs.append(run)
    manifest = engine.manifest
    return CalibrationData(
        thresholds=base or base_thresholds(manifest.raw, manifest.thresholds),
        class_names=manifest.class_names,
        furnaces=runs,
        settings=tuple(settings),
        source={
            "path": str(data),
            "furnaces": sorted({r.furnace_id for r in runs}),
            "recordings": [r.name for r in runs],
            "labels": labels,
            "replay_seconds": round(time.perf_counter() - t0, 1),
        },
    )


def replay_entries(
    engine: Engine,
    entries: Entries,
    furnace_id: str,
    name: str,
    furnace_hours: float,
    settings: Sequence[str],
    service: ServiceSettings,
) -> FurnaceRun:
    """One recording's stream entries replayed under each setting: its decided windows (no
    events; the caller adds them where it has labels). Each setting is an independent replay
    (`score_windows`: with memory heads, its own empty code history)."""
    from furnace.scorecard import assemble, score_windows

    run = FurnaceRun(furnace_id, name, furnace_hours, {}, {})
    for setting in settings:
        windows = assemble(entries, furnace_id, engine.manifest.window, SETTINGS[setting], service)
        kept, undecided = [], 0
        for det in score_windows(engine, windows):
            if det.decided:
                kept.append(_compact(det))
            else:
                undecided += 1
        run.windows[setting] = kept
        run.undecided[setting] = undecided
        run.events[setting] = []
    return run


def furnace_recordings(data: str | Path, furnaces: Iterable[str]) -> list[str]:
    """The recordings of `data` whose sentinel `furnace_id` is one of `furnaces` (sorted).

    Raises:
        ValueError: a furnace without a recording in the dataset.
    """
    from furnace.scorecard import recording_names
    from training.data.fmf import resolve_root

    wanted = set(furnaces)
    root = resolve_root(data)
    found: dict[str, list[str]] = {}
    for name in recording_names(data):
        fid = str(json.loads((root / "sentinel" / f"{name}.json").read_text())["furnace_id"])
        if fid in wanted:
            found.setdefault(fid, []).append(name)
    missing = sorted(wanted - set(found))
    if missing:
        msg = f"{root}: no recording of furnaces {missing} (is this the run's training data?)"
        raise ValueError(msg)
    return sorted(n for names in found.values() for n in names)


# --------------------------------------------------------------------------- adaptation


def _raw(r: ModalityResult) -> float:
    return r.score if r.raw_score is None else r.raw_score


def _sequences(
    data: CalibrationData,
) -> Iterable[tuple[FurnaceRun, str, str, list[int]]]:
    """(run, setting, modality, indices of the windows that modality decided) in order."""
    for run in data.furnaces:
        for setting in data.settings:
            ws = run.windows.get(setting, [])
            for m in MODALITIES:
                index = [i for i, w in enumerate(ws) if m in w.used and m in w.results]
                if index:
                    yield run, setting, m, index


def adaptation_reference(
    data: CalibrationData,
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    quantile: float = DEFAULT_QUANTILE,
    min_windows: int = DEFAULT_MIN_WINDOWS,
    max_shift: float = DEFAULT_MAX_SHIFT,
    hop_seconds: float,
) -> AdaptationSpec | None:
    """The adaptation spec whose per-modality reference is the median of the calibration
    furnaces' baselines (each window's, raw scores, every replayed setting): a furnace that
    reads like the typical calibration furnace keeps its scores (service/adaptation.py). A
    modality no window of which has `min_windows` earlier windows of its furnace (recordings
    too short) gets no reference, and so no adaptation; None when neither modality has one.
    """
    spec = AdaptationSpec(window_seconds, quantile, min_windows, hop_seconds, {}, max_shift)
    found: dict[str, list[float]] = {m: [] for m in MODALITIES}
    for run, setting, m, index in _sequences(data):
        history = ScoreHistory(spec)
        ws = run.windows[setting]
        for i in index:
            b = history.baselines(m, [(run.furnace_id, ws[i].window_end, _raw(ws[i].results[m]))])
            if b[0] is not None:
                found[m].append(b[0])
    reference = {m: round(float(np.median(v)), 6) for m, v in found.items() if v}
    for m in sorted(set(MODALITIES) - set(reference)):
        logger.warning(
            "per-furnace adaptation off for the %s: no calibration window has %d earlier "
            "windows of its furnace (recordings too short)",
            m,
            min_windows,
        )
    return replace(spec, reference=reference) if reference else None


def adapt(data: CalibrationData, spec: AdaptationSpec | None) -> CalibrationData:
    """The calibration data as an engine with adaptation `spec` would have scored it: each
    furnace's windows, per setting and modality in order, through the service's own
    `ScoreHistory` from the raw scores (`raw_score` where the replay already adapted).
    `spec` None: the raw scores (no adaptation)."""
    furnaces = []
    for run in data.furnaces:
        windows = {s: list(ws) for s, ws in run.windows.items()}
        furnaces.append(replace(run, windows=windows))
    out = replace(data, furnaces=furnaces)
    for run, setting, m, index in _sequences(out):
        ws = run.windows[setting]
        history = ScoreHistory(spec) if spec is not None else None
        for i in index:
            r = ws[i].results[m]
            raw = _raw(r)
            score = raw
            if history is not None:
                score = history.adjust(m, [(run.furnace_id, ws[i].window_end, raw)])[0]
            results = {**ws[i].results, m: replace(r, score=score, raw_score=raw)}
            ws[i] = replace(ws[i], results=results)
    return out


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """An alert policy and threshold factors (>= 1; 1 keeps the base threshold): in-ratio
    `current`, `camera`, `fused` (the two-modality rule) and `current_alone`,
    `camera_alone` (one modality deciding; module docstring)."""

    k: int
    n: int
    m: int = DEFAULT_M
    current: float = 1.0
    camera: float = 1.0
    fused: float = 1.0
    current_alone: float = 1.0
    camera_alone: float = 1.0

    def policy(self) -> AlertPolicy:
        from service.alerting import AlertPolicy

        return AlertPolicy(k=self.k, n=self.n, m=self.m)

    def factors(self) -> dict[str, float]:
        return {
            "current": self.current,
            "camera": self.camera,
            "fused": self.fused,
            "current_alone": self.current_alone,
            "camera_alone": self.camera_alone,
        }

    def thresholds(self, base: Thresholds) -> Thresholds:
        """The base thresholds under this candidate's factors (module docstring).

        Raises:
            ValueError: in-ratio current or camera factors other than 1 under averaged
                fusion (there the alone factors set those thresholds).
        """
        if base.fusion != "max_ratio":
            if self.current != 1.0 or self.camera != 1.0:
                msg = "averaged fusion has no in-ratio current/camera thresholds: use the "
                msg += f"alone factors ({self})"
                raise ValueError(msg)
            return replace(
                base,
                current=_shrink(base.current, self.current_alone),
                camera=_shrink(base.camera, self.camera_alone),
                fused=_shrink(base.fused, self.fused),
                current_alone=1.0,
                camera_alone=1.0,
            )
        current = _shrink(base.current, self.current)
        camera = _shrink(base.camera, self.camera)
        return replace(
            base,
            current=current,
            camera=camera,
            fused=base.fused * self.fused,
            current_alone=_shrink(base.current, self.current_alone) / max(current, RATIO_FLOOR),
            camera_alone=_shrink(base.camera, self.camera_alone) / max(camera, RATIO_FLOOR),
        )


def muted_modalities(thr: Thresholds) -> tuple[str, ...]:
    """Under max-ratio fusion, the modalities that can never make a two-sensor window
    abnormal: score <= 1, so the ratio score / t_m is at most 1 / t_m, and a fused threshold
    at or above that silences the modality (() under averaged fusion)."""
    if thr.fusion != "max_ratio":
        return ()
    limits = {"current": thr.current, "camera": thr.camera}
    return tuple(m for m, t in limits.items() if 1.0 / max(t, RATIO_FLOOR) <= thr.fused)


def _shrink(t: float, factor: float) -> float:
    return 1.0 - (1.0 - t) / factor


def alone_score_thresholds(thr: Thresholds) -> dict[str, float]:
    """The score 1 - p(normal) a modality deciding alone must exceed under `thr`."""
    if thr.fusion != "max_ratio":
        return {"current": thr.current, "camera": thr.camera}
    return {
        "current": max(thr.current, RATIO_FLOOR) * thr.current_alone,
        "camera": max(thr.camera, RATIO_FLOOR) * thr.camera_alone,
    }


def _looser(thr: Thresholds) -> Thresholds:
    """`thr` with every threshold lowered by `RATIO_SLACK` (relative): each window abnormal
    under a candidate at least as strict as `thr` is abnormal under this, rounding included
    (the pruning must keep a superset of the windows any candidate flags)."""
    k = 1.0 - RATIO_SLACK
    return replace(
        thr,
        current=thr.current * k,
        camera=thr.camera * k,
        fused=thr.fused * k,
        current_alone=thr.current_alone * k,
        camera_alone=thr.camera_alone * k,
    )


@dataclass(frozen=True)
class Grid:
    """The searched candidates: (k, n) pairs, m, and the factors per threshold.

    `margin` applies to the in-ratio current and camera thresholds (max-ratio bundles; 1
    only under averaged fusion), `alone` to the single-sensor ones (None: `margin`), `fused`
    to the fused threshold (None: `RATIO_FACTORS` for max-ratio bundles, `margin` for
    averaged ones)."""

    kn: tuple[tuple[int, int], ...] = KN_GRID
    m: int = DEFAULT_M
    margin: tuple[float, ...] = MARGIN_FACTORS
    fused: tuple[float, ...] | None = None
    alone: tuple[float, ...] | None = None

    def fused_factors(self, fusion: str) -> tuple[float, ...]:
        if self.fused is not None:
            return self.fused
        return RATIO_FACTORS if fusion == "max_ratio" else self.margin

    def ratio_factors(self, fusion: str) -> tuple[float, ...]:
        """The in-ratio current and camera factors."""
        return self.margin if fusion == "max_ratio" else (1.0,)

    def alone_factors(self) -> tuple[float, ...]:
        return self.margin if self.alone is None else self.alone

    def check(self, fusion: str) -> None:
        """Raises ValueError for an empty grid, a factor below 1 or an invalid (k, n)."""
        factors = (*self.margin, *self.fused_factors(fusion), *self.alone_factors())
        empty = not self.kn or not self.margin or not self.alone_factors()
        if empty or any(f < 1.0 or not math.isfinite(f) for f in factors):
            msg = f"the grid needs (k, n) pairs and finite factors >= 1, got {self}"
            raise ValueError(msg)
        for k, n in self.kn:
            Candidate(k, n, self.m).policy()  # AlertPolicy validates 1 <= k <= n, m >= 1

    @property
    def reach(self) -> int:
        """max(n, m) over the grid: how many clean windows after an abnormal one matter."""
        return max(max(n for _, n in self.kn), self.m)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class SettingOutcome:
    """One setting under one candidate, over every furnace."""

    furnace_hours: float
    events: int
    visible: int
    alerted: int  # visible events alerted
    false_episodes: int
    episodes: int
    delays: tuple[float, ...]  # delay from visible of each alerted visible event

    @property
    def false_per_hour(self) -> float:
        return self.false_episodes / self.furnace_hours if self.furnace_hours else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "furnace_hours": round(self.furnace_hours, 4),
            "events": self.events,
            "visible": self.visible,
            "alerted": self.alerted,
            "false_episodes": self.false_episodes,
            "false_episodes_per_10_furnace_hours": round(self.false_per_hour * 10.0, 3),
            "episodes": self.episodes,
            "median_delay_from_visible_s": _median(self.delays),
        }


def _median(xs: Sequence[float]) -> float | None:
    return float(np.median(xs)) if xs else None


@dataclass(frozen=True)
class Evaluation:
    """A candidate's outcome in every setting."""

    candidate: Candidate
    settings: dict[str, SettingOutcome]

    @property
    def alerted(self) -> int:
        return sum(o.alerted for o in self.settings.values())

    @property
    def false_episodes(self) -> int:
        return sum(o.false_episodes for o in self.settings.values())

    @property
    def worst_false_per_hour(self) -> float:
        return max((o.false_per_hour for o in self.settings.values()), default=0.0)

    @property
    def median_delay(self) -> float | None:
        return _median([d for o in self.settings.values() for d in o.delays])

    def meets(self, target_per_hour: float) -> bool:
        return all(o.false_per_hour <= target_per_hour + 1e-12 for o in self.settings.values())


def outcome(
    episodes: Sequence[EpisodeRecord], events: Sequence[TruthEvent], furnace_hours: float
) -> SettingOutcome:
    """Count a setting's episodes against its events with the scorecard's rules."""
    outcomes, false = match_events(events, episodes)
    vis = [o for o in outcomes if o.visible]
    alerted = [o for o in vis if o.alerted]
    return SettingOutcome(
        furnace_hours=furnace_hours,
        events=len(outcomes),
        visible=len(vis),
        alerted=len(alerted),
        false_episodes=len(false),
        episodes=len(episodes),
        delays=tuple(float(o.delay_s) for o in alerted if o.delay_s is not None),
    )


def _detection(fid: str, w: WindowResult, thr: Thresholds, names: tuple[str, ...]) -> Detection:
    """The window re-decided under `thr` with the engine's own rule."""
    from service.engine import decide

    return decide(w.results, w.used, thr, names).detection(fid, w.window_end, w.used, names)


def setting_episodes(
    runs: Sequence[FurnaceRun],
    setting: str,
    thr: Thresholds,
    policy: AlertPolicy,
    names: tuple[str, ...],
) -> list[EpisodeRecord]:
    """Every window of `runs` in one setting re-decided under `thr` and replayed through the
    alert policy (no shortcut): the episodes, furnace by furnace."""
    episodes: list[EpisodeRecord] = []
    for run in runs:
        dets = (_detection(run.furnace_id, w, thr, names) for w in run.windows[setting])
        episodes += apply_policy(dets, run.furnace_id, policy).episodes
    return episodes


def replay_full(data: CalibrationData, candidate: Candidate, setting: str) -> SettingOutcome:
    """A candidate in one setting, every window re-decided and replayed (no shortcut)."""
    thr = candidate.thresholds(data.thresholds)
    episodes = setting_episodes(data.furnaces, setting, thr, candidate.policy(), data.class_names)
    events = [ev for run in data.furnaces for ev in run.events[setting]]
    return outcome(episodes, events, data.furnace_hours())


class _Setting:
    """One setting's windows, reduced to the ones any candidate of the grid can need."""

    def __init__(self, data: CalibrationData, setting: str, loosest: Thresholds, reach: int):
        self.data = data
        self.setting = setting
        self.events = [ev for run in data.furnaces for ev in run.events[setting]]
        self.hours = data.furnace_hours()
        # per furnace: indices (into its decided windows) of the windows that matter
        self.keep: list[list[int]] = []
        for run in data.furnaces:
            ws = run.windows[setting]
            hot = [
                i
                for i, w in enumerate(ws)
                if _detection(run.furnace_id, w, loosest, data.class_names).is_abnormal
            ]
            need = set(range(min(reach, len(ws))))
            for i in hot:
                need.update(range(i, min(i + reach + 1, len(ws))))
            self.keep.append(sorted(need))
        self._decided: dict[tuple[float, ...], list[list[Detection]]] = {}

    def decisions(self, thr: Thresholds) -> list[list[Detection]]:
        """The kept windows of every furnace re-decided under `thr` (cached)."""
        key = (thr.current, thr.camera, thr.fused, thr.current_alone, thr.camera_alone)
        if key not in self._decided:
            names = self.data.class_names
            self._decided[key] = [
                [_detection(run.furnace_id, run.windows[self.setting][i], thr, names) for i in idx]
                for run, idx in zip(self.data.furnaces, self.keep, strict=True)
            ]
        return self._decided[key]

    def evaluate(self, candidate: Candidate) -> SettingOutcome:
        thr = candidate.thresholds(self.data.thresholds)
        policy = candidate.policy()
        reach = max(candidate.n, candidate.m)
        episodes: list[EpisodeRecord] = []
        for run, idx, dets in zip(self.data.furnaces, self.keep, self.decisions(thr), strict=True):
            episodes += apply_policy(_compress(idx, dets, reach), run.furnace_id, policy).episodes
        return outcome(episodes, self.events, self.hours)


def _compress(idx: Sequence[int], dets: Sequence[Detection], reach: int) -> list[Detection]:
    """Drop the clean windows that follow `reach` clean ones (module docstring): `idx` are
    the kept windows' positions among the furnace's decided windows; a gap in them stands for
    windows clean under every candidate, at least `reach` of them after the last abnormal."""
    out = []
    streak, prev = 0, -1  # clean decided windows in a row before the current one
    for i, det in zip(idx, dets, strict=True):
        if i != prev + 1:
            streak = max(streak, reach)
        prev = i
        if det.is_abnormal:
            out.append(det)
            streak = 0
        else:
            if streak < reach:
                out.append(det)
            streak += 1
    return out


# --------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    chosen: Evaluation
    baseline: Evaluation  # (3, 4), m, factors 1: the bundle before calibration
    met_target: bool
    target_per_hour: float
    evaluated: int  # candidates evaluated in full (all settings)
    feasible: int
    seconds: float
    note: str = ""
    ranked: list[Evaluation] = field(default_factory=list)  # feasible (or fallback) best first


def _rank_feasible(ev: Evaluation, grid_pos: tuple[int, ...]) -> tuple[Any, ...]:
    delay = ev.median_delay
    return (
        -ev.alerted,
        math.inf if delay is None else delay,
        sum(grid_pos[1:]),
        grid_pos[0],
        ev.false_episodes,
    )


def _rank_fallback(ev: Evaluation, grid_pos: tuple[int, ...]) -> tuple[Any, ...]:
    return (ev.false_episodes, ev.worst_false_per_hour, *_rank_feasible(ev, grid_pos))


def _rank_alone(o: SettingOutcome, pos: int) -> tuple[Any, ...]:
    """One single-sensor setting's alone factors (module docstring, step 1): under the
    target the most alerted, then the lower median delay, then the loosest."""
    delay = _median(o.delays)
    return (-o.alerted, math.inf if delay is None else delay, pos, o.false_episodes)


def _rank_alone_fallback(o: SettingOutcome, pos: int) -> tuple[Any, ...]:
    return (o.false_episodes, *_rank_alone(o, pos))


def _alone_candidate(kn: tuple[int, int], m: int, setting: str, factor: float) -> Candidate:
    """(k, n), m and one single-sensor setting's alone factor (the others 1)."""
    if setting == "current_only":
        return Candidate(*kn, m, current_alone=factor)
    return Candidate(*kn, m, camera_alone=factor)


def search(
    data: CalibrationData,
    *,
    target_per_hour: float = DEFAULT_TARGET_PER_10H / 10.0,
    grid: Grid | None = None,
) -> SearchResult:
    """Choose the candidate by the module docstring's rule.

    Raises:
        ValueError: an invalid grid, or no furnaces.
    """
    t0 = time.perf_counter()
    grid = grid or Grid()
    base = data.thresholds
    grid.check(base.fusion)
    if not data.furnaces:
        msg = "no furnaces to calibrate on"
        raise ValueError(msg)
    # a factor no setting compares with stays at its first value (in-ratio ones: only the
    # both-sensor setting; alone ones: see alone_pos)
    ratio, fused = grid.ratio_factors(base.fusion), grid.fused_factors(base.fusion)
    if "both" not in data.settings:
        ratio, fused = ratio[:1], fused[:1]
    alone = grid.alone_factors()
    loosest = Candidate(
        1, 1, 1, min(ratio), min(ratio), min(fused), min(alone), min(alone)
    ).thresholds(base)
    sets = {s: _Setting(data, s, _looser(loosest), grid.reach) for s in data.settings}

    def ok(o: SettingOutcome) -> bool:
        return o.false_per_hour <= target_per_hour + 1e-12

    # step 1: per (k, n), each single-sensor setting's own best alone factor
    single: dict[tuple[str, tuple[int, int]], tuple[int, SettingOutcome]] = {}
    for kn in grid.kn:
        for s in ("current_only", "camera_only"):
            if s not in sets:
                continue
            outs = [
                (i, sets[s].evaluate(_alone_candidate(kn, grid.m, s, f)))
                for i, f in enumerate(alone)
            ]
            under = [(i, o) for i, o in outs if ok(o)]
            single[(s, kn)] = (
                min(under, key=lambda x: _rank_alone(x[1], x[0]))
                if under
                else min(outs, key=lambda x: _rank_alone_fallback(x[1], x[0]))
            )

    def alone_pos(s: str, kn: tuple[int, int]) -> int:
        return single[(s, kn)][0] if (s, kn) in single else 0

    def evaluate(cand: Candidate) -> Evaluation:
        kn = (cand.k, cand.n)
        out = {}
        for s in data.settings:
            if s in ("current_only", "camera_only"):
                out[s] = single[(s, kn)][1]
            else:
                out[s] = sets[s].evaluate(cand)
        return Evaluation(cand, out)

    def singles_ok(kn: tuple[int, int]) -> bool:
        return all(ok(o) for (s, k), (_, o) in single.items() if k == kn)

    positions: dict[Candidate, tuple[int, ...]] = {}
    evaluated: list[Evaluation] = []
    muted: set[Candidate] = set()
    both = "both" in data.settings

    # step 2: the in-ratio factors with the alone ones fixed
    def run(prune: bool) -> None:
        for a, kn in enumerate(grid.kn):
            if prune and not singles_ok(kn):
                continue
            e, f = alone_pos("current_only", kn), alone_pos("camera_only", kn)
            for b, fc in enumerate(ratio):
                for c, fcam in enumerate(ratio):
                    for d, ff in enumerate(fused):
                        cand = Candidate(*kn, grid.m, fc, fcam, ff, alone[e], alone[f])
                        if both and muted_modalities(cand.thresholds(base)):
                            muted.add(cand)
                            continue
                        if cand not in positions:
                            positions[cand] = (a, b, c, d, e, f)
                            evaluated.append(evaluate(cand))

    run(prune=True)
    feasible = [e for e in evaluated if e.meets(target_per_hour)]
    met = bool(feasible)
    if met:
        ranked = sorted(feasible, key=lambda e: _rank_feasible(e, positions[e.candidate]))
    else:
        run(prune=False)  # nothing meets the target: the fewest false episodes of all
        ranked = sorted(evaluated, key=lambda e: _rank_fallback(e, positions[e.candidate]))
    if muted:
        logger.info("%d candidates skipped: they would mute a sensor", len(muted))
    if not ranked:
        msg = "every candidate mutes a sensor with both healthy (fused ratio threshold >= "
        msg += f"1 / its threshold; base {base}): recalibrate the per-window thresholds"
        raise CalibrationError(msg)
    chosen = ranked[0]
    # the shortcut (and the single-sensor outcomes reused across in-ratio factors) must
    # agree with a full replay of every window
    for s in data.settings:
        full = replay_full(data, chosen.candidate, s)
        if full != chosen.settings[s]:
            msg = f"shortcut replay {chosen.settings[s]} != full replay {full} ({s})"
            raise CalibrationError(msg)
    before = Candidate(3, 4, DEFAULT_M)  # the uncalibrated service: per-window thresholds
    baseline = Evaluation(before, {s: replay_full(data, before, s) for s in data.settings})
    note = ""
    if not met:
        note = (
            f"no candidate meets {target_per_hour * 10:g} false episodes per 10 furnace-hours "
            "in every setting; taking the one with the fewest false episodes ("
            + ", ".join(f"{s} {o.false_episodes}" for s, o in chosen.settings.items())
            + f" in {data.furnace_hours():.2f} furnace-hours)"
        )
        logger.warning(note)
    return SearchResult(
        chosen=chosen,
        baseline=baseline,
        met_target=met,
        target_per_hour=target_per_hour,
        evaluated=len(evaluated),
        feasible=len(feasible),
        seconds=time.perf_counter() - t0,
        note=note,
        ranked=ranked[:10],
    )


# --------------------------------------------------------------------------- the bundle


def policy_record(data: CalibrationData, result: SearchResult) -> dict[str, Any]:
    """The manifest's `alert_policy` object."""
    c = result.chosen.candidate
    alone = alone_score_thresholds(c.thresholds(data.thresholds))
    return {
        "k": c.k,
        "n": c.n,
        "m": c.m,
        "target_false_episodes_per_hour": result.target_per_hour,
        "met_target": result.met_target,
        "note": result.note or None,
        "factors": c.factors(),
        "threshold_rule": THRESHOLD_RULE,
        "single_sensor_score_thresholds": alone,
        "measured": {s: o.as_dict() for s, o in result.chosen.settings.items()},
        "before": {
            "k": result.baseline.candidate.k,
            "n": result.baseline.candidate.n,
            "m": result.baseline.candidate.m,
            "thresholds": "thresholds_per_window",
            "measured": {s: o.as_dict() for s, o in result.baseline.settings.items()},
        },
        "calibration_data": {
            **data.source,
            "furnace_hours": round(data.furnace_hours(), 4),
            "search_seconds": round(result.seconds, 1),
            "candidates_evaluated": result.evaluated,
            "candidates_meeting_target": result.feasible,
            "rule": "per (k, n) each single-sensor setting's alone factor (under the target: "
            "max alerted visible events, then lower median delay, then the loosest; else the "
            "fewest false episodes); then max alerted visible events (all settings), then "
            "lower median delay, then the loosest candidate, subject to false episodes per "
            "furnace-hour <= target in every setting; else the fewest false episodes",
        },
    }


def _threshold_values(thr: Thresholds) -> dict[str, float]:
    """The manifest's calibrated threshold values (`*_alone` under max-ratio fusion only)."""
    out = {"current": thr.current, "camera": thr.camera, "fused": thr.fused}
    if thr.fusion == "max_ratio":
        out |= {"current_alone": thr.current_alone, "camera_alone": thr.camera_alone}
    return out


def _signing_key(bundle: Path, path: str | Path | None) -> Ed25519PrivateKey | None:
    """The key that re-signs the manifest: `path`, else FURNACE_SIGNING_KEY; a signed bundle
    needs one (its old signature will not match the rewritten manifest)."""
    from training.export.signing import is_signed, load_signing_key

    path = path if path is not None else os.environ.get("FURNACE_SIGNING_KEY") or None
    if path is not None:
        return load_signing_key(path)
    if is_signed(bundle):
        msg = f"{bundle} is signed: give --signing-key (or FURNACE_SIGNING_KEY) so the "
        msg += "recalibrated manifest is signed again"
        raise ValueError(msg)
    return None


def write_calibration(
    folder: Path,
    data: CalibrationData,
    result: SearchResult,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    adaptation: AdaptationSpec | None = None,
) -> Path:
    """Put the chosen policy and thresholds into `folder/manifest.json` through
    `training.export.bundle.rewrite_manifest` (file hashes checked, model version kept),
    signed with `signing_key` (docs/export.md "Signing"), with the per-furnace `adaptation`
    the scores were searched under (None: the manifest has none)."""
    from service.bundle import verify_bundle
    from training.export.bundle import rewrite_manifest

    path = folder / "manifest.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    thr = result.chosen.candidate.thresholds(data.thresholds)
    base = data.thresholds
    raw["thresholds_per_window"] = {
        "current": base.current,
        "camera": base.camera,
        "fused": base.fused,
        "target_far": base.target_far,
    }
    kept = {k: v for k, v in raw["thresholds"].items() if not k.endswith("_alone")}
    raw["thresholds"] = {**kept, **_threshold_values(thr)}
    raw["alert_policy"] = policy_record(data, result)
    raw.pop("adaptation", None)
    if adaptation is not None:
        raw["adaptation"] = adaptation.to_manifest()
    rewrite_manifest(folder, raw, signing_key=signing_key)
    verify_bundle(folder)  # the service's reader must accept what was written
    return path


def pool(parts: Sequence[CalibrationData]) -> CalibrationData:
    """Several datasets' calibration data as one (their furnace-hours pooled).

    Raises:
        ValueError: no parts, or parts replayed with other thresholds, classes or settings.
    """
    if not parts:
        msg = "nothing to pool"
        raise ValueError(msg)
    first = parts[0]
    if len(parts) == 1:
        return first
    for part in parts[1:]:
        same = (part.thresholds, part.class_names, part.settings)
        if same != (first.thresholds, first.class_names, first.settings):
            msg = "calibration data replayed with other thresholds, classes or settings"
            raise ValueError(msg)
    return CalibrationData(
        thresholds=first.thresholds,
        class_names=first.class_names,
        furnaces=[f for part in parts for f in part.furnaces],
        settings=first.settings,
        source={
            "path": ", ".join(str(p.source.get("path")) for p in parts),
            "furnaces": [f for p in parts for f in p.source.get("furnaces", [])],
            "recordings": [r for p in parts for r in p.source.get("recordings", [])],
            "labels": all(p.source.get("labels", True) for p in parts),
            "replay_seconds": round(sum(p.source.get("replay_seconds", 0.0) for p in parts), 1),
            "datasets": [
                {k: p.source.get(k) for k in ("path", "furnaces", "recordings")} for p in parts
            ],
        },
    )


def copy_bundle(src: Path, out: Path) -> Path:
    """Copy a bundle's listed files and manifest into a new (or empty) folder.

    Raises:
        ValueError: `out` exists and is not empty.
    """
    from service.bundle import read_manifest

    if out.exists() and any(out.iterdir()):
        msg = f"{out} exists and is not empty: give a new folder to --out"
        raise ValueError(msg)
    manifest = read_manifest(src)
    out.mkdir(parents=True, exist_ok=True)
    signature = [SIGNATURE_FILE] if (src / SIGNATURE_FILE).is_file() else []
    for name in [*manifest.files, "manifest.json", *signature]:
        shutil.copy2(src / name, out / name)
    return out


ALL_FURNACES = "all"
VALIDATION_FURNACES = "val"


def resolve_sources(
    data: str | Path | Sequence[str | Path] | None,
    furnaces: str | Sequence[str] | None,
    recorded: dict[str, Any],
    where: str = "the manifest",
) -> list[tuple[Path, list[str]]]:
    """Which recordings of which datasets to calibrate on.

    Args:
        data: dataset folders (default: `recorded["path"]`, the run's training data).
        furnaces: one spec per dataset, or one for all of them: `val` (the run's validation
            furnaces, `recorded["furnaces"]["val"]`; the default), `all` (every recording of
            that dataset) or comma-separated furnace ids.
        recorded: the manifest's `training.data`.
        where: names the manifest in messages.

    Returns:
        (dataset, recording names) per dataset.

    Raises:
        ValueError: no dataset, specs that do not pair with the datasets, `val` without
            recorded validation furnaces, or furnaces without a recording.
        FileNotFoundError: a dataset folder that does not exist.
    """
    from furnace.scorecard import recording_names

    if data is None or data == []:
        paths = [recorded["path"]] if recorded.get("path") else []
    elif isinstance(data, str | Path):
        paths = [data]
    else:
        paths = list(data)
    if not paths:
        msg = f"{where} records no training data: give --data DIR [--furnaces a,b,c | all]"
        raise ValueError(msg)
    specs = [furnaces] if isinstance(furnaces, str) else list(furnaces or [])
    if not specs:
        specs = [VALIDATION_FURNACES]
    if len(specs) == 1:
        specs *= len(paths)
    if len(specs) != len(paths):
        msg = f"{len(specs)} --furnaces for {len(paths)} --data: give one, or one per --data"
        raise ValueError(msg)
    out = []
    for path, spec in zip(paths, specs, strict=True):
        if not Path(path).exists():
            msg = f"calibration data {path} does not exist: give --data DIR"
            raise FileNotFoundError(msg)
        spec = spec.strip()
        if spec == ALL_FURNACES:
            names = recording_names(path)
        else:
            if spec == VALIDATION_FURNACES:
                ids = list((recorded.get("furnaces") or {}).get("val") or [])
                if not ids:
                    msg = f"{where} records no validation furnaces: give --furnaces a,b,c or all"
                    raise ValueError(msg)
            else:
                ids = [f.strip() for f in spec.split(",") if f.strip()]
                if not ids:
                    msg = f"--furnaces {spec!r} names no furnace"
                    raise ValueError(msg)
            names = furnace_recordings(path, ids)
        out.append((Path(path), names))
    return out


def calibrate_bundle(
    bundle: str | Path,
    *,
    data: str | Path | Sequence[str | Path] | None = None,
    furnaces: str | Sequence[str] | None = None,
    target_per_10h: float = DEFAULT_TARGET_PER_10H,
    out: str | Path | None = None,
    grid: Grid | None = None,
    progress: bool = False,
    signing_key: str | Path | None = None,
    adaptation: bool = True,
) -> dict[str, Any]:
    """Calibrate a bundle's alert policy on its validation furnaces (or other simulated
    furnaces) and write it into the manifest (in place, or into a copy at `out`).

    Args:
        bundle: the bundle folder.
        data: simulated datasets holding the furnaces; several are pooled (default: the
            manifest's `training.data.path`).
        furnaces: per dataset (or one for all): `val` (the manifest's
            `training.data.furnaces.val`; the default), `all` or comma-separated furnace ids
            (`resolve_sources`).
        target_per_10h: false episodes per 10 furnace-hours allowed in every setting.
        out: write a calibrated copy here instead of changing `bundle`.
        grid: the candidates (default `Grid()`).
        progress: tqdm bar over furnaces.
        signing_key: the Ed25519 private key (PEM) that signs the rewritten manifest;
            required when the bundle is signed (checked before the replay).
        adaptation: turn on per-furnace adaptation (service/adaptation.py; its reference
            taken from these furnaces) and search on adapted scores; False drops it.

    Returns:
        The `alert_policy` object written, plus `bundle` (the folder written) and
        `thresholds` (the calibrated ones).

    Raises:
        ValueError: no validation furnaces or data recorded and none given, a dataset
            without the sentinel extension, an `out` folder that is not empty, or a signed
            bundle and no (valid) signing key.
        FileNotFoundError: the bundle or data folder does not exist.
        service.bundle.BundleError: the bundle does not verify.
    """
    from service.engine import Engine

    src = Path(bundle)
    if not src.is_dir():
        msg = f"bundle folder {src} does not exist"
        raise FileNotFoundError(msg)
    if target_per_10h < 0 or not math.isfinite(target_per_10h):
        msg = f"the target must be a finite number >= 0, got {target_per_10h}"
        raise ValueError(msg)
    key = _signing_key(src, signing_key)
    engine = Engine(src)
    recorded = (engine.manifest.raw.get("training") or {}).get("data") or {}
    sources = resolve_sources(data, furnaces, recorded, f"{src}/manifest.json")
    parts = []
    for path, names in sources:
        logger.info("alert calibration on %d recordings of %s", len(names), path)
        parts.append(collect(engine, path, names, progress=progress))
    cal = pool(parts)
    hop = engine.manifest.window.hop_seconds
    spec = adaptation_reference(cal, hop_seconds=hop) if adaptation else None
    cal = adapt(cal, spec)
    result = search(cal, target_per_hour=target_per_10h / 10.0, grid=grid)
    folder = copy_bundle(src, Path(out)) if out is not None else src
    write_calibration(folder, cal, result, signing_key=key, adaptation=spec)
    record = policy_record(cal, result)
    thr = result.chosen.candidate.thresholds(cal.thresholds)
    extra = {"adaptation": None if spec is None else spec.to_manifest()}
    return {**record, "bundle": str(folder), "thresholds": _threshold_values(thr), **extra}


def format_summary(record: dict[str, Any]) -> str:
    """What the CLI prints: the chosen policy, and before/after per setting."""
    f = record["factors"]
    thr = record["thresholds"]
    alone = record["single_sensor_score_thresholds"]
    lines = [
        f"alert policy: open on {record['k']} of {record['n']}, close after {record['m']}",
        f"  both sensors (in-ratio): factors current {f['current']:g} camera {f['camera']:g} "
        f"fused {f['fused']:g} -> thresholds current {thr['current']:.4f} camera "
        f"{thr['camera']:.4f} fused {thr['fused']:.4f}",
        f"  one sensor (alone): factors current {f['current_alone']:g} camera "
        f"{f['camera_alone']:g} -> score thresholds current {alone['current']:.4f} camera "
        f"{alone['camera']:.4f}"
        + (
            f" (ratios current_alone {thr['current_alone']:.4f} camera_alone "
            f"{thr['camera_alone']:.4f})"
            if "current_alone" in thr
            else ""
        ),
        f"target {record['target_false_episodes_per_hour'] * 10:g} false episodes per 10 "
        f"furnace-hours: {'met' if record['met_target'] else 'NOT MET'}",
    ]
    if record.get("note"):
        lines.append(f"NOTE: {record['note']}")
    ad = record.get("adaptation")
    if ad:
        ref = ", ".join(f"{m} {v:+.3f}" for m, v in ad["reference"].items())
        lines.append(
            f"per-furnace adaptation: the {ad['quantile']:g} quantile of the last "
            f"{ad['window_seconds']:g} s (>= {ad['min_windows']} windows); reference logits {ref}"
        )
    else:
        lines.append("per-furnace adaptation: off")
    head = "| setting | policy | furnace-h | visible | alerted | false | false / 10 h |"
    lines += ["", head + " median delay [s] |", "|---" * 8 + "|"]
    for label, part in (("before", record["before"]["measured"]), ("after", record["measured"])):
        for s, o in part.items():
            delay = o["median_delay_from_visible_s"]
            lines.append(
                f"| {s} | {label} | {o['furnace_hours']:.2f} | {o['visible']} | {o['alerted']} "
                f"| {o['false_episodes']} | {o['false_episodes_per_10_furnace_hours']:.1f} | "
                f"{'—' if delay is None else f'{delay:.1f}'} |"
            )
    return "\n".join(lines)
