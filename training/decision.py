"""Decision and calibration rules of a run: a head's probabilities on both modalities'
windows (`window_probs`), the fusion rules (`fuse`, `fuse_max`, `fused_decision`), thresholds
at a target false-alarm rate on validation normals (`calibrate`, and `calibrate_mixed` for a
different head per modality), the choice of the head each modality ships (`select_heads`) and
the label-free zero-shot thresholds (`quantile_matched_threshold`, `zero_shot_thresholds`).

`training.run` calibrates a run with them; `training.evaluation` scores runs with them. The
service applies the same fused rule to a bundle's thresholds (service/engine.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from model.cmg import CMG
from model.heads import DetectorHead
from simulator.config import CLASS_NAMES
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import paired_mask
from training.evaluation.metrics import auroc, decide, macro_f1, threshold_for_false_alarm_rate
from training.train_head import Encoded, encode_all, predict


def source_modalities(head: str) -> tuple[str, ...]:
    """The modalities whose labels train a head (or a run's `label_modality`)."""
    return MODALITIES if head == "both" else (head,)


def window_probs(
    model: CMG, head: DetectorHead, w: Windows, encoded: dict[str, Encoded] | None = None
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Encoded]]:
    """Per modality: probabilities for every window, validity, and the codes."""
    return mixed_probs(model, dict.fromkeys(MODALITIES, head), w, encoded)


def mixed_probs(
    model: CMG,
    heads: dict[str, DetectorHead],
    w: Windows,
    encoded: dict[str, Encoded] | None = None,
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Encoded]]:
    """`window_probs` where each modality has its own head: `heads[m]` on m's codes."""
    enc = encoded if encoded is not None else encode_all(model, w)
    return {m: (predict(heads[m], enc[m].q), valid_for(w, m), enc[m]) for m in MODALITIES}


def fuse(
    probs: dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Any]],
) -> NDArray[np.float64]:
    """Average the modalities' probabilities where each is valid (one valid: that one).

    The fusion rule of format-1 bundles, kept as `ablation_average_fusion_fused`.
    """
    (pc, vc, _), (pv, vv, _) = probs["current"], probs["camera"]
    wc, wv = vc.astype(float)[:, None], vv.astype(float)[:, None]
    total = np.maximum(wc + wv, 1.0)
    return (pc * wc + pv * wv) / total


RATIO_FLOOR = 1e-6  # a modality threshold below this is floored before dividing by it


def fuse_max(
    probs: dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Any]],
    thresholds: dict[str, float],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Either modality can raise the alarm: score = the larger threshold ratio [ours].

    Detection: each valid modality's score (1 - p(normal)) is divided by its own calibrated
    threshold and the window's score is the larger ratio, so a condition seen by one sensor
    only (breakage on current, a hot spot on camera) is not diluted by the other sensor's
    "normal", which averaging does (docs/method.md). Classification: the averaged
    probabilities (`fuse`), which name the condition better than either view alone.

    Args:
        probs: `window_probs` output: per modality (probs (W, C), valid (W,), codes).
        thresholds: `current` and `camera` thresholds on 1 - p(normal).

    Returns:
        (averaged probs (W, C), score (W,)); score is 0 where neither modality is valid.
    """
    ratios = []
    for m in MODALITIES:
        p, valid, _ = probs[m]
        r = (1.0 - p[:, 0]) / max(thresholds[m], RATIO_FLOOR)
        ratios.append(np.where(valid, r, -np.inf))
    score = np.max(np.stack(ratios), axis=0)  # (W,)
    return fuse(probs), np.where(np.isfinite(score), score, 0.0)


def fused_decision(
    probs: dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Any]],
    thresholds: dict[str, float],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A run's fused decision: (probs (W, C), score (W,)) against `thresholds["fused"]`.

    `fuse_max` where the thresholds were calibrated for it (they carry `fused_average`, runs
    trained since the max rule); older runs' `fused` threshold belongs to the average.
    """
    if "fused_average" in thresholds:
        return fuse_max(probs, thresholds)
    averaged = fuse(probs)
    return averaged, 1.0 - averaged[:, 0]


def calibrate(
    model: CMG,
    head: DetectorHead,
    val: Windows,
    target_far: float,
    encoded: dict[str, Encoded] | None = None,
) -> dict[str, float]:
    """Thresholds at `target_far` on normal validation windows (nuisances included).

    `current` and `camera` are on score = 1 - p(normal); `fused` is on the larger threshold
    ratio (`fuse_max`) of windows with both modalities; `fused_average` on 1 - p(normal) of
    the averaged probabilities (`fuse`, the ablation). `calibrate_mixed` with this head for
    both modalities.
    """
    return calibrate_mixed(model, dict.fromkeys(MODALITIES, head), val, target_far, encoded)


def calibrate_mixed(
    model: CMG,
    heads: dict[str, DetectorHead],
    val: Windows,
    target_far: float,
    encoded: dict[str, Encoded] | None = None,
) -> dict[str, float]:
    """`calibrate` for a bundle whose modalities carry different heads [ours].

    Each modality's threshold is its own head's, calibrated as `calibrate` does (it depends
    on that head and modality only); the fused thresholds are calibrated again for the pair:
    `fused` on the larger threshold ratio of each modality's probabilities from its own head
    against those thresholds, `fused_average` on 1 - p(normal) of their average, both on the
    normal validation windows where both modalities are valid.

    Args:
        model: the frozen CMG.
        heads: `current` and `camera`: the head each modality's decision uses.
        val: validation windows of the training furnaces.
        target_far: the false-alarm rate each threshold allows on normal windows.
        encoded: `encode_all(model, val)`, when already computed.

    Returns:
        `current`, `camera`, `fused` and `fused_average` thresholds.
    """
    return calibrate_probs(mixed_probs(model, heads, val, encoded), val.label, target_far)


def calibrate_probs(
    probs: dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Any]],
    label: NDArray[np.int64],
    target_far: float,
) -> dict[str, float]:
    """`calibrate_mixed`'s thresholds from per-modality probabilities that are already known
    (each modality's (W, C) probabilities, any value where not valid, and validity), e.g.
    the memory heads' (training/export/memory.py)."""
    normal = label == 0
    out = {}
    for m in MODALITIES:
        p, valid, _ = probs[m]
        out[m] = threshold_for_false_alarm_rate(1.0 - p[normal & valid, 0], target_far)
    both = normal & probs["current"][1] & probs["camera"][1]
    _, ratio = fuse_max(probs, out)
    out["fused"] = threshold_for_false_alarm_rate(ratio[both], target_far)
    averaged = fuse(probs)
    out["fused_average"] = threshold_for_false_alarm_rate(1.0 - averaged[both, 0], target_far)
    return out


class HeadSelection(NamedTuple):
    """The head each modality's graph carries and the validation figures behind the choice."""

    heads: dict[str, str]  # modality -> head name
    report: dict[str, dict[str, Any]]  # modality -> rule, windows, figures per head


def _nan_low(x: float) -> float:
    return -1.0 if np.isnan(x) else x


def decision_figures(
    head: DetectorHead, enc: Encoded, valid: NDArray[np.bool_], y: NDArray[np.int64], thr: float
) -> dict[str, float]:
    """The service's decision with one head on one modality's valid windows: macro-F1 over the
    classes present, AUROC of the score (NaN where undefined).
    """
    p = predict(head, enc.q)[valid]
    yv = y[valid]
    if yv.size == 0:
        return {"macro_f1_decision": float("nan"), "auroc": float("nan"), "threshold": thr}
    score = 1.0 - p[:, 0]
    present = [CLASS_NAMES[i] for i in np.unique(yv)]
    return {
        "macro_f1_decision": macro_f1(yv, decide(p, score, thr), present),
        "auroc": auroc(yv, score),
        "threshold": thr,
    }


def select_heads(
    model: CMG,
    heads: dict[str, DetectorHead],
    thresholds: dict[str, dict[str, float]],
    val: Windows,
    encoded: dict[str, Encoded] | None = None,
    *,
    fixed: dict[str, str] | None = None,
) -> HeadSelection:
    """The head each modality ships: the best on validation among those trained with its labels.

    For modality m the candidates are the heads whose training labels include m (`m` and
    `both`, `source_modalities`); the one whose service decision (score 1 - p(normal) against
    that head's calibrated threshold for m, condition `decide`) has the best macro-F1 over
    the classes present on m's valid validation windows wins (AUROC breaks ties, then the
    order of `heads`). Only when no head was trained with m's labels does m fall back to a
    zero-shot head (trained on the other modality), chosen by the same figures. `fixed`
    names the head of a modality outright.

    Args:
        model: the frozen CMG.
        heads: the run's heads by name (`current`, `camera`, `both`; absent ones were not
            trained, e.g. no labelled windows of a modality).
        thresholds: the run's thresholds per head (`train_log.json` "thresholds").
        val: validation windows of the training furnaces.
        encoded: `encode_all(model, val)`, when already computed.
        fixed: modality -> head name, overriding the rule.

    Returns:
        HeadSelection: the head per modality and, per modality, `head`, `rule`
        (`best_validation_macro_f1`, `zero_shot_fallback` or `explicit`), `windows` and the
        figures of every head (`labels`: the modalities it was trained on).

    Raises:
        ValueError: a fixed head or modality the run does not have, or a run without heads.
    """
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(MODALITIES))
    if unknown:
        msg = f"heads are chosen per modality {MODALITIES}, got {unknown}"
        raise ValueError(msg)
    for name in fixed.values():
        if name not in heads:
            msg = f"head {name!r} not in the run (has {sorted(heads)})"
            raise ValueError(msg)
    if not heads:
        msg = "the run has no heads to ship"
        raise ValueError(msg)
    enc = encoded if encoded is not None else encode_all(model, val)
    chosen: dict[str, str] = {}
    report: dict[str, dict[str, Any]] = {}
    for m in MODALITIES:
        valid = valid_for(val, m)
        figures = {
            name: decision_figures(head, enc[m], valid, val.label, float(thresholds[name][m]))
            for name, head in heads.items()
        }

        def rank(name: str, figures: dict[str, dict[str, float]] = figures) -> tuple[float, ...]:
            return tuple(_nan_low(figures[name][k]) for k in ("macro_f1_decision", "auroc"))

        eligible = [name for name in heads if m in source_modalities(name)]
        if m in fixed:
            best, rule = fixed[m], "explicit"
        else:
            rule = "best_validation_macro_f1" if eligible else "zero_shot_fallback"
            best = max(eligible or list(heads), key=rank)  # the first of equals
        chosen[m] = best
        report[m] = {
            "head": best,
            "rule": rule,
            "candidates": eligible,
            "windows": int(valid.sum()),
            "figures": {
                name: {**fig, "labels": list(source_modalities(name))}
                for name, fig in figures.items()
            },
        }
    return HeadSelection(chosen, report)


def head_label(heads: dict[str, str]) -> str:
    """A bundle's `head`: the head's name when both modalities carry the same one, else
    `current=NAME,camera=NAME`.
    """
    names = [heads[m] for m in MODALITIES]
    if len(set(names)) == 1:
        return names[0]
    return ",".join(f"{m}={heads[m]}" for m in MODALITIES)


def shipped_heads(
    model: CMG,
    heads: dict[str, DetectorHead],
    thresholds: dict[str, dict[str, float]],
    val: Windows,
    target_far: float,
    encoded: dict[str, Encoded] | None = None,
    *,
    fixed: dict[str, str] | None = None,
) -> tuple[HeadSelection, dict[str, float]]:
    """What a bundle of a run ships: the head per modality (`select_heads`) and the thresholds
    of that pair (`calibrate_mixed`) in the run's rule: `fused` on the max ratio with
    `fused_average` beside it, or, for runs calibrated before the max rule (no
    `fused_average` in their thresholds), `fused` on the averaged probabilities alone
    (`fused_decision` tells them apart).
    """
    enc = encoded if encoded is not None else encode_all(model, val)
    selection = select_heads(model, heads, thresholds, val, enc, fixed=fixed)
    pair = {m: heads[selection.heads[m]] for m in MODALITIES}
    cal = calibrate_mixed(model, pair, val, target_far, enc)
    if any("fused_average" not in thresholds[h] for h in selection.heads.values()):
        cal = {**{m: cal[m] for m in MODALITIES}, "fused": cal["fused_average"]}
    return selection, cal


def quantile_matched_threshold(
    source_scores: NDArray[np.float64], target_scores: NDArray[np.float64], source_threshold: float
) -> tuple[float, float]:
    """A target-modality threshold that alarms as often as the source threshold does [ours].

    Label-free calibration of a zero-shot decision by quantile matching: q is the share of
    source scores above `source_threshold`, and the target threshold is the (1 - q) quantile of
    the target scores. On paired windows (the same furnace-time seen by both sensors) the
    abnormal share is the same in both modalities, so no target label is needed. The "lower"
    quantile makes exactly as many target scores exceed the threshold as source scores do
    (ties aside) when both arrays have the same length; q = 0 gives the largest target score,
    so nothing alarms.

    Args:
        source_scores: (N,) source-modality scores of one head, 1 - p(normal).
        target_scores: (M,) the same head's scores on the target modality's windows.
        source_threshold: the source modality's calibrated threshold.

    Returns:
        (target threshold, q).

    Raises:
        ValueError: when either array is empty.
    """
    if source_scores.size == 0 or target_scores.size == 0:
        msg = "quantile matching needs source and target scores (no paired windows?)"
        raise ValueError(msg)
    q = float(np.mean(source_scores > source_threshold))
    return float(np.quantile(target_scores, 1.0 - q, method="lower")), q


def zero_shot_thresholds(
    model: CMG,
    heads: dict[str, DetectorHead],
    val: Windows,
    thresholds: dict[str, dict[str, float]],
) -> dict[str, dict[str, float]]:
    """Label-free target thresholds of both zero-shot directions (`quantile_matched_threshold`).

    Uses every paired validation window (both modalities valid, no clock skew; no label is
    read): the source head's scores on the source modality against its own threshold
    (`thresholds[src][src]`, as `calibrate` set it) fix the alarm share, and the same head's
    scores on the target modality of the same windows fix the threshold.

    Args:
        model: the frozen CMG.
        heads: `current` and `camera` heads.
        val: validation windows of the training furnaces.
        thresholds: a run's thresholds per head (`train_log.json` "thresholds").

    Returns:
        {"current_to_camera": {...}, "camera_to_current": {...}}, each with `threshold` (on
        the target's 1 - p(normal)), `source_threshold`, `alarm_share` (q) and `windows`.
    """
    pairs = val.select(paired_mask(val))
    enc = encode_all(model, pairs)
    out = {}
    for src, dst in (("current", "camera"), ("camera", "current")):
        probs = window_probs(model, heads[src], pairs, enc)
        source, target = 1.0 - probs[src][0][:, 0], 1.0 - probs[dst][0][:, 0]
        threshold, q = quantile_matched_threshold(source, target, thresholds[src][src])
        out[f"{src}_to_{dst}"] = {
            "threshold": threshold,
            "source_threshold": thresholds[src][src],
            "alarm_share": q,
            "windows": float(len(pairs)),
        }
    return out
