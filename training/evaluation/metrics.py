"""Detection metrics as the evaluation reports them: macro-F1 over listed conditions, AUROC of
abnormal vs normal, FDR and MDR as FmFormer reports them, and detection delay after onset.

A score is higher when more anomalous. FDR = false alarms among normal windows, MDR = missed
abnormal windows, both at the calibrated threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from simulator.config import CLASS_NAMES, EVIDENCE
from training.data import Windows

_RANK = {"none": 0, "weak": 1, "moderate": 2, "strong": 3}


def conditions_with_evidence(modalities: Sequence[str], at_least: str = "moderate") -> list[str]:
    """`normal` plus the conditions whose evidence is >= `at_least` in every given modality."""
    keep = [
        name
        for name in CLASS_NAMES[1:]
        if all(_RANK[EVIDENCE[name][m]] >= _RANK[at_least] for m in modalities)
    ]
    return ["normal", *keep]


def macro_f1(
    y_true: NDArray[np.int64], y_pred: NDArray[np.int64], conditions: Sequence[str]
) -> float:
    """Macro-F1 over `conditions`, on the windows whose true class is one of them."""
    idx = [CLASS_NAMES.index(c) for c in conditions]
    keep = np.isin(y_true, idx)
    if not keep.any():
        return float("nan")
    return float(f1_score(y_true[keep], y_pred[keep], labels=idx, average="macro", zero_division=0))


def auroc(y_true: NDArray[np.int64], score: NDArray[np.float64]) -> float:
    """AUROC of abnormal (class != 0) vs normal windows by anomaly score."""
    abnormal = y_true != 0
    if abnormal.all() or not abnormal.any():
        return float("nan")
    return float(roc_auc_score(abnormal, score))


def per_class_auroc(
    y_true: NDArray[np.int64], probs: NDArray[np.float64], names: Sequence[str]
) -> dict[str, float]:
    """Per condition: AUROC of p(condition) on that condition's windows against normal ones.

    Unlike `auroc` (1 - p(normal) over every abnormal class) it is not capped by the
    conditions a modality cannot see (electrode breakage on the camera, docs/design/furnace.md 4.2).
    NaN where the condition or normal windows are absent.
    """
    out = {}
    normal = y_true == 0
    for i, name in enumerate(names[1:], start=1):
        cls = y_true == i
        keep = normal | cls
        ok = cls.any() and normal.any()
        out[name] = float(roc_auc_score(cls[keep], probs[keep, i])) if ok else float("nan")
    return out


def fdr_mdr(
    y_true: NDArray[np.int64], score: NDArray[np.float64], threshold: float
) -> tuple[float, float]:
    """(false-alarm rate on normal windows, missed-detection rate on abnormal windows)."""
    alarm = score > threshold
    normal = y_true == 0
    fdr = float(alarm[normal].mean()) if normal.any() else float("nan")
    mdr = float((~alarm[~normal]).mean()) if (~normal).any() else float("nan")
    return fdr, mdr


def detection_delays(
    *,
    recording: NDArray[np.str_],
    t_end: NDArray[np.float64],
    alarm: NDArray[np.bool_],
    events: dict[str, list[dict[str, Any]]],
    k: int = 2,
    n: int = 3,
) -> list[float]:
    """Seconds from each event's onset to the first alert (k of the last n windows alarmed).

    Args:
        recording: (W,) recording name per window.
        t_end: (W,) window end time in the recording's seconds.
        alarm: (W,) score above threshold.
        events: recording name -> condition events with `onset_s` and `end_s`.
        k: alarms needed among the last `n` windows to raise an alert.
        n: hysteresis length in windows.

    Returns:
        One delay per detected event; missed events are left out (see `missed_events`).
    """
    delays = []
    for name, evs in events.items():
        sel = np.flatnonzero(recording == name)
        if sel.size == 0:
            continue
        order = sel[np.argsort(t_end[sel])]
        t, a = t_end[order], alarm[order].astype(int)
        alert = np.convolve(a, np.ones(n, int), mode="full")[: a.size] >= k
        for ev in evs:
            inside = (t >= ev["onset_s"]) & (t <= ev["end_s"] + 16.0)
            hits = np.flatnonzero(inside & alert)
            if hits.size:
                delays.append(float(t[hits[0]] - ev["onset_s"]))
    return delays


def decide(
    probs: NDArray[np.float64], score: NDArray[np.float64], threshold: float
) -> NDArray[np.int64]:
    """The service's condition per window (service/engine.py): `normal` (0) where the score is
    at or below the threshold, else the most probable class, or the most probable abnormal
    class where that is `normal`.

    Args:
        probs: (W, C) class probabilities.
        score: (W,) detection scores.
        threshold: the decision threshold on `score`.

    Returns:
        (W,) class indices.
    """
    top = probs.argmax(1)
    abnormal = 1 + probs[:, 1:].argmax(1)
    return np.where(score > threshold, np.where(top == 0, abnormal, top), 0).astype(np.int64)


def summarise_setting(
    *,
    y_true: NDArray[np.int64],
    probs: NDArray[np.float64],
    threshold: float,
    conditions: Sequence[str],
    recording: NDArray[np.str_] | None = None,
    t_end: NDArray[np.float64] | None = None,
    events: dict[str, list[dict[str, Any]]] | None = None,
    score: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluation setting, in the `metrics.json` shape.

    `score` (higher = more anomalous, compared with `threshold`) defaults to 1 - p(normal);
    the condition of `macro_f1` is the most probable class of `probs`; `macro_f1_decision` scores
    the service's answer instead (`decide`: normal unless the score is above the threshold).
    """
    if score is None:
        score = 1.0 - probs[:, 0]
    y_pred = probs.argmax(1)
    y_decided = decide(probs, score, threshold)
    fdr, mdr = fdr_mdr(y_true, score, threshold)
    out: dict[str, Any] = {
        "macro_f1": macro_f1(y_true, y_pred, conditions),
        "macro_f1_all": macro_f1(y_true, y_pred, CLASS_NAMES),
        "macro_f1_decision": macro_f1(y_true, y_decided, conditions),
        "auroc": auroc(y_true, score),
        "fdr": fdr,
        "mdr": mdr,
        "delay_s": float("nan"),
        "conditions": list(conditions),
        "n_windows": int(y_true.shape[0]),
        "per_class_auroc": per_class_auroc(y_true, probs, CLASS_NAMES[: probs.shape[1]]),
        "per_class_f1": {
            name: float(f1_score(y_true == i, y_pred == i, zero_division=0))
            for i, name in enumerate(CLASS_NAMES)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=range(len(CLASS_NAMES))).tolist(),
    }
    if recording is not None and t_end is not None and events is not None:
        delays = detection_delays(
            recording=recording, t_end=t_end, alarm=score > threshold, events=events
        )
        n_events = sum(len(v) for v in events.values())
        out["delay_s"] = float(np.median(delays)) if delays else float("nan")
        out["events_detected"] = f"{len(delays)}/{n_events}"
    return out


def threshold_for_false_alarm_rate(normal_scores: NDArray[np.float64], rate: float) -> float:
    """Smallest threshold whose false-alarm rate on normal windows is at most `rate`."""
    if normal_scores.size == 0:
        msg = "no normal validation windows to calibrate the threshold on"
        raise ValueError(msg)
    return float(np.quantile(normal_scores, 1.0 - rate, method="higher"))


CONDITIONS_BY_SETTING: dict[str, list[str]] = {
    "fused": conditions_with_evidence([], "none"),  # all six
    "current_only": conditions_with_evidence(["current"]),
    "camera_only": conditions_with_evidence(["camera"]),
    "zero_shot_current_to_camera": conditions_with_evidence(["current", "camera"]),
    "zero_shot_camera_to_current": conditions_with_evidence(["current", "camera"]),
}


def score_setting(
    name: str,
    w: Windows,
    probs: NDArray[np.float64],
    mask: NDArray[np.bool_],
    threshold: float,
    events: dict[str, list[dict[str, Any]]],
    score: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """One row of the settings table: metrics of `probs` (and `score`) on the windows `mask`."""
    out = summarise_setting(
        y_true=w.label[mask],
        probs=probs[mask],
        threshold=threshold,
        conditions=CONDITIONS_BY_SETTING[name],
        recording=w.recording[mask],
        t_end=w.t_end[mask],
        events=events,
        score=None if score is None else score[mask],
    )
    out["threshold"] = threshold
    return out
