"""Detection-quality probe: what does a supervised current detector on hand features reach at
the event level, under the same alert calibration as the shipped bundle?

    .venv/bin/python bench/peer_event_probe.py --bundle models/default \
        --calibrate data/train120:val data/cal data/cal2 --measure data/test data/score12 data/cal3

The first `--calibrate` dataset must be the bundle's training data (`:val` picks its validation
furnaces from the manifest, the peer trains on the rest): data/train120 for the bundle shipped
since 2026-12-05 (fifth session), data/train for the bundles before it.

The question behind it (the detection issue): is the current-alone gap of the shipped bundle
(alerted / visible events at the false-episode target) a loss in the label-free shared codes,
or the limit of what the current shows? The peer is the project's gradient-boosting baseline
(`training.evaluation.baselines.current_window_features`, 27 hand features per window; in a
second variant also the window's level against a 600-s trailing median, which lifted its
window-level overheating F1 0.60 -> 0.82 in docs/experiments.md, "A long baseline"), trained on the
training furnaces of the first `--calibrate` dataset with its labels and thresholded at 1 %
false alarms on its validation normals, as the bundle's heads are.

Both detectors are scored on the exact windows the service decides when only the current is
up (`furnace.alert_calibration.collect` with the bundle's engine, the datasets' sensor faults
applied): the peer's probabilities replace the bundle's current result window by window, so
the window grid, the faults and the decision rule are the same. Each is calibrated by the
shipped search (`alert_calibration.search`, current-only setting, target 1 false episode per
10 furnace-hours) on the `--calibrate` datasets and counted by the scorecard's rules on the
`--measure` datasets. Figures and what was decided: docs/experiments.md, "Candidates
measured end to end".
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier

from furnace import alert_calibration as ac
from furnace.scorecard import recording_names
from service.bundle import Thresholds
from service.detection import ModalityResult
from service.engine import Engine
from simulator.config import CLASS_NAMES
from training.data.fmf import read_fmf
from training.data.windows import Windows, make_windows
from training.evaluation.baselines import current_window_features

SETTING = "current_only"
LONG_BASELINE_S = 600.0


@dataclass(frozen=True)
class RecordingFeatures:
    """One recording's windows as the peer sees them (the frames are dropped after reading)."""

    start_epoch: float  # Unix seconds of t = 0: window_end - start_epoch = t_end
    t_end: NDArray[np.float64]  # (W,)
    label: NDArray[np.int64]  # (W,)
    valid_cur: NDArray[np.bool_]  # (W,)
    long: NDArray[np.float64]  # (W, F): the base features, then the long-baseline ones
    n_base: int  # the base features' columns

    def features(self, long: bool) -> NDArray[np.float64]:
        return self.long if long else self.long[:, : self.n_base]


def features(w: Windows) -> tuple[NDArray[np.float64], int]:
    """The peer's features, then per phase the window mean and std and the 120-s baseline
    against the 600-s one (relative); and how many columns the first part has."""
    f = current_window_features(w.x_c, w.baseline)
    x = w.x_c.reshape(w.x_c.shape[0], -1, 3).astype(np.float64)
    short = np.maximum(w.baseline[:, :3].astype(np.float64), 1.0)
    lng = np.maximum(w.baseline[:, 3:6].astype(np.float64), 1.0)
    extra = [x.mean(1) / lng - 1.0, short / lng - 1.0, x.std(1) / lng]
    return np.concatenate([f, *extra], 1), f.shape[1]


@functools.cache
def recording_features(data: str, name: str, faults: bool) -> RecordingFeatures:
    """Read once per recording for both variants (reading, frames included, is the cost)."""
    rec = read_fmf(data, names=[name], apply_faults=faults)[0]
    w = make_windows(rec, long_baseline_s=LONG_BASELINE_S)
    f, n_base = features(w)
    return RecordingFeatures(rec.start_epoch, w.t_end, w.label, w.valid_cur, f, n_base)


def dataset_names(spec: str, val_furnaces: list[str]) -> tuple[str, list[str]]:
    """`DIR` (every recording) or `DIR:val` / `DIR:train` (the run's furnace split of its
    training data: `val_furnaces` are the validation furnaces the bundle's manifest records)."""
    data, _, part = spec.partition(":")
    names = recording_names(data)
    if not part:
        return data, names
    val = set(ac.furnace_recordings(data, val_furnaces))
    return data, [n for n in names if (n in val) == (part == "val")]


def fit_peer(data: str, train: list[str], val: list[str], long: bool) -> tuple[object, float]:
    """The peer on the training furnaces (clean recordings, valid current windows) and its
    threshold on 1 - p(normal) at 1 % false alarms on the validation normals."""
    xs, ys = [], []
    for name in train:
        r = recording_features(data, name, faults=False)
        xs.append(r.features(long)[r.valid_cur])
        ys.append(r.label[r.valid_cur])
    x, y = np.concatenate(xs), np.concatenate(ys)
    counts = np.bincount(y, minlength=len(CLASS_NAMES)).astype(float)
    weight = 1.0 / np.sqrt(np.maximum(counts[y], 1.0))
    model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=0)
    model.fit(x, y, sample_weight=weight / weight.mean())
    normal = []
    for name in val:
        r = recording_features(data, name, faults=False)
        keep = r.valid_cur & (r.label == 0)
        normal.append(1.0 - probabilities(model, r.features(long)[keep])[:, 0])
    return model, float(np.quantile(np.concatenate(normal), 0.99))


def probabilities(model: object, x: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.zeros((x.shape[0], len(CLASS_NAMES)))
    out[:, model.classes_] = model.predict_proba(x)  # type: ignore[attr-defined]
    return out


def substitute(
    cal: ac.CalibrationData, data: str, model: object, long: bool, base: Thresholds
) -> ac.CalibrationData:
    """`cal` with every current result replaced by the peer's probabilities on the same
    window (faults applied as the replay applied them)."""
    runs = []
    for run in cal.furnaces:
        rf = recording_features(data, run.name, faults=True)
        probs = probabilities(model, rf.features(long))
        at = {round(float(t), 1): p for t, p in zip(rf.t_end, probs, strict=True)}
        windows = []
        for r in run.windows[SETTING]:
            p = at[round(r.window_end - rf.start_epoch, 1)]  # KeyError: the grids disagree
            res = ModalityResult([], [float(v) for v in p], float(1.0 - p[0]), [])
            windows.append(replace(r, results={**r.results, "current": res}))
        runs.append(replace(run, windows={SETTING: windows}))
    return replace(cal, furnaces=runs, thresholds=base)


def pooled(cals: list[ac.CalibrationData]) -> ac.CalibrationData:
    return replace(cals[0], furnaces=[r for c in cals for r in c.furnaces])


def report(label: str, measure: dict[str, ac.CalibrationData], res: ac.SearchResult) -> None:
    cand = res.chosen.candidate
    on_cal = res.chosen.settings[SETTING]
    total = [0, 0, 0, 0.0]
    parts = []
    for data, cal in measure.items():
        thr = cand.thresholds(cal.thresholds)
        eps = ac.setting_episodes(cal.furnaces, SETTING, thr, cand.policy(), cal.class_names)
        evs = [e for r in cal.furnaces for e in r.events[SETTING]]
        o = ac.outcome(eps, evs, cal.furnace_hours())
        parts.append(f"{data} {o.alerted}/{o.visible} ({o.false_episodes} false)")
        total[0] += o.alerted
        total[1] += o.visible
        total[2] += o.false_episodes
        total[3] += o.furnace_hours
    rate = 10.0 * total[2] / total[3]
    print(
        f"| {label} | {cand.k} of {cand.n}, alone factor {cand.current_alone:g} | "
        f"{on_cal.alerted}/{on_cal.visible} ({on_cal.false_episodes}) | {'; '.join(parts)} | "
        f"{total[0]}/{total[1]} | {total[2]} ({rate:.1f}) |",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="models/default")
    ap.add_argument(
        "--calibrate", nargs="+", default=["data/train120:val", "data/cal", "data/cal2"]
    )
    ap.add_argument("--measure", nargs="+", default=["data/test", "data/score12", "data/cal3"])
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = Engine(args.bundle)
    val_furnaces = list(engine.manifest.raw["training"]["data"]["furnaces"]["val"])
    cal_specs = [dataset_names(s, val_furnaces) for s in args.calibrate]

    def collect(data: str, names: list[str]) -> ac.CalibrationData:
        return ac.collect(engine, data, names, settings=(SETTING,), progress=True)

    cal = {d: collect(d, n) for d, n in cal_specs}
    measure = {d: collect(d, recording_names(d)) for d in args.measure}
    print(
        "| detector | chosen policy | calibration hours: alerted / visible (false) "
        "| alerted / visible per set (false episodes) | pooled alerted "
        "| pooled false (per 10 furnace-h) |"
    )
    print("|---|---|---|---|---|---|")
    res = ac.search(pooled(list(cal.values())), target_per_hour=0.1)
    report(f"bundle {engine.model_version}, current head", measure, res)
    train_data = cal_specs[0][0]
    train = dataset_names(f"{train_data}:train", val_furnaces)[1]
    val = dataset_names(f"{train_data}:val", val_furnaces)[1]
    for long in (False, True):
        model, t = fit_peer(train_data, train, val, long)
        base = Thresholds(current=t, camera=t, fused=t, target_far=0.01, fusion="average")
        peer_cal = [substitute(c, d, model, long, base) for d, c in cal.items()]
        res = ac.search(pooled(peer_cal), target_per_hour=0.1)
        peer_measure = {d: substitute(c, d, model, long, base) for d, c in measure.items()}
        label = "gradient boosting, hand features" + (" + 600-s baseline" if long else "")
        report(f"{label} (threshold {t:.3f})", peer_measure, res)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
