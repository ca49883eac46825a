"""`furnace train`: pre-train CMG without labels, select a checkpoint and train heads on the
source modality's labels only, calibrate thresholds, save the run (CMG.md section 7).

A run folder holds `checkpoint.pt` (configs, model and head weights, thresholds, selection
history) and `train_log.json` (the same minus weights, for people and tools).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model.cmg import CMG, build_cmg
from model.heads import DetectorHead
from simulator.config import CLASS_NAMES
from training.config import RunConfig, config_from_dict, config_to_dict
from training.data import Windows
from training.metrics import threshold_for_false_alarm_rate
from training.pretrain import pretrain
from training.splits import SplitData, load_recordings, paired_mask, split_by_furnace
from training.train_head import Encoded, encode_windows, predict, train_head

logger = logging.getLogger(__name__)
SELECT_MAX_WINDOWS = 6000  # labelled training windows per checkpoint during selection
MODALITIES = ("current", "camera")


def source_modalities(label_modality: str) -> tuple[str, ...]:
    return MODALITIES if label_modality == "both" else (label_modality,)


def valid_for(w: Windows, modality: str) -> NDArray[np.bool_]:
    return w.valid_cur if modality == "current" else w.valid_cam


def subsample(mask: NDArray[np.bool_], n: int, seed: int) -> NDArray[np.int64]:
    idx = np.flatnonzero(mask)
    if idx.size <= n:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))


def _encode_labelled(
    model: CMG,
    w: Windows,
    modalities: tuple[str, ...],
    limit: int,
    seed: int,
    cache: dict[tuple[int, str], tuple[torch.Tensor, NDArray[np.int64]]] | None = None,
) -> tuple[torch.Tensor, NDArray[np.int64]]:
    """Codes of the given modalities' valid windows, stacked, with their labels.

    `cache` keeps each modality's encoding of `w` so that several heads (current, camera,
    both) share one encoder pass; the subsample depends only on (w, modality, limit, seed).
    """
    cache = {} if cache is None else cache
    for m in modalities:
        if (id(w), m) not in cache:
            idx = subsample(valid_for(w, m), limit, seed)
            cache[id(w), m] = (encode_windows(model, w, m, index=idx).q, w.label[idx])
    parts = [cache[id(w), m] for m in modalities]
    return torch.cat([q for q, _ in parts]), np.concatenate([y for _, y in parts])


def _fit_head(
    model: CMG,
    cfg: RunConfig,
    data: SplitData,
    mods: tuple[str, ...],
    limit: int,
    epochs: int,
    cache: dict[tuple[int, str], tuple[torch.Tensor, NDArray[np.int64]]] | None = None,
) -> tuple[DetectorHead, dict[str, float]]:
    """A head on the given modalities' codes, best epoch on their validation windows."""
    tc = cfg.train
    q_tr, y_tr = _encode_labelled(model, data.train, mods, limit, tc.seed, cache)
    q_va, y_va = _encode_labelled(model, data.val, mods, limit, tc.seed + 1, cache)
    return train_head(
        q_tr,
        y_tr,
        q_va,
        y_va,
        dim=cfg.cmg.encoder.dim,
        n_classes=cfg.cmg.n_classes,
        pool=cfg.cmg.head_pool,
        epochs=epochs,
        lr=tc.head_lr,
        batch=tc.head_batch,
        seed=tc.seed,
    )


def split_for(cfg: RunConfig, recs: list[Any]) -> SplitData:
    """The run's train / validation split of a dataset (the same for training and baselines)."""
    tc = cfg.train
    return split_by_furnace(recs, val_fraction=tc.val_fraction, seed=tc.seed, **tc.window_args)


def fit_heads(
    model: CMG, cfg: RunConfig, data: SplitData, *, limit: int | None = None
) -> tuple[dict[str, DetectorHead], dict[str, dict[str, float]]]:
    """One head per source choice (current, camera, both) on the frozen model."""
    n = limit or len(data.train)
    heads, figures = {}, {}
    cache: dict[tuple[int, str], tuple[torch.Tensor, NDArray[np.int64]]] = {}
    for source in ("current", "camera", "both"):
        mods = source_modalities(source)
        heads[source], figures[source] = _fit_head(
            model, cfg, data, mods, n, cfg.train.head_epochs, cache
        )
    return heads, figures


def select_checkpoint(
    cfg: RunConfig, data: SplitData, checkpoints: list[tuple[int, dict[str, Any]]]
) -> tuple[int, list[dict[str, float]]]:
    """Pick the checkpoint whose head is best on the SOURCE modality's validation split."""
    tc = cfg.train
    mods = source_modalities(tc.label_modality)
    table = []
    best, best_key = 0, (-1.0, -1.0)
    model = build_cmg(cfg.cmg)
    for i, (step, state) in enumerate(checkpoints):
        model.load_state_dict(state)
        epochs = max(5, tc.head_epochs // 3)
        _, fig = _fit_head(model, cfg, data, mods, SELECT_MAX_WINDOWS, epochs)
        au = 0.0 if np.isnan(fig["auroc"]) else fig["auroc"]
        table.append({"step": float(step), "val_macro_f1": fig["macro_f1"], "val_auroc": au})
        logger.info("checkpoint step %d: source-val macro-F1 %.3f", step, fig["macro_f1"])
        if (fig["macro_f1"], au) > best_key:
            best, best_key = i, (fig["macro_f1"], au)
    return best, table


def encode_all(model: CMG, w: Windows) -> dict[str, Encoded]:
    """Codes of every window in both modalities (encode once, apply many heads)."""
    return {m: encode_windows(model, w, m) for m in MODALITIES}


def window_probs(
    model: CMG, head: DetectorHead, w: Windows, encoded: dict[str, Encoded] | None = None
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.bool_], Encoded]]:
    """Per modality: probabilities for every window, validity, and the codes."""
    enc = encoded if encoded is not None else encode_all(model, w)
    return {m: (predict(head, enc[m].q), valid_for(w, m), enc[m]) for m in MODALITIES}


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
    the averaged probabilities (`fuse`, the ablation).
    """
    probs = window_probs(model, head, val, encoded)
    normal = val.label == 0
    out = {}
    for m in MODALITIES:
        p, valid, _ = probs[m]
        out[m] = threshold_for_false_alarm_rate(1.0 - p[normal & valid, 0], target_far)
    both = normal & val.valid_cur & val.valid_cam
    _, ratio = fuse_max(probs, out)
    out["fused"] = threshold_for_false_alarm_rate(ratio[both], target_far)
    averaged = fuse(probs)
    out["fused_average"] = threshold_for_false_alarm_rate(1.0 - averaged[both, 0], target_far)
    return out


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


def train_run(
    data_dir: str | Path, out_dir: str | Path, cfg: RunConfig, *, progress: bool = True
) -> Path:
    """The whole `furnace train` job. Returns the checkpoint path."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = split_for(cfg, load_recordings(data_dir))
    if data.binary:
        msg = "binary FMF-Benchmark labels: set cmg.n_classes: 2 in the config"
        if cfg.cmg.n_classes != 2:
            raise ValueError(msg)
    stride = int(round(tc.pretrain_hop_s / tc.hop_s))
    on_grid = (np.round(data.train.t_end / tc.hop_s).astype(np.int64) % max(stride, 1)) == 0
    pre_train = data.train.select(paired_mask(data.train) & on_grid)
    pre_val = data.val.select(paired_mask(data.val))
    logger.info(
        "windows: %d train (%d paired for pre-training), %d val; furnaces %s",
        len(data.train),
        len(pre_train),
        len(data.val),
        data.furnaces,
    )
    result = pretrain(cfg, pre_train, pre_val, progress=progress)
    best, selection = select_checkpoint(cfg, data, result.checkpoints)
    step, state = result.checkpoints[best]
    model = build_cmg(cfg.cmg)
    model.load_state_dict(state)
    model.eval()
    heads, head_figures = fit_heads(model, cfg, data)
    # Thresholds of every head, each calibrated on validation normals (the primary head,
    # `label_modality`, is what the bundle ships).
    val_codes = encode_all(model, data.val)
    thresholds = {
        k: calibrate(model, h, data.val, tc.target_far, val_codes) for k, h in heads.items()
    }
    log = {
        "config": config_to_dict(cfg),
        "data": {"path": str(Path(data_dir).resolve()), "furnaces": data.furnaces},
        "windows": {"train": len(data.train), "val": len(data.val), "pretrain": len(pre_train)},
        "selected_step": step,
        "selection": selection,
        "diagnostics": result.history,
        "heads_val": head_figures,
        "thresholds": thresholds,
        "target_far": tc.target_far,
        "class_names": list(CLASS_NAMES[: cfg.cmg.n_classes]),
        "pretrain_seconds": result.seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    path = out / "checkpoint.pt"
    torch.save(
        {
            "log": log,
            "cmg": model.state_dict(),
            "heads": {k: h.state_dict() for k, h in heads.items()},
        },
        path,
    )
    (out / "train_log.json").write_text(json.dumps(log, indent=2, default=float))
    logger.info("saved %s (selected step %d) in %.0f s", path, step, log["total_seconds"])
    return path


def load_run(run_dir: str | Path) -> tuple[RunConfig, CMG, dict[str, DetectorHead], dict[str, Any]]:
    """Rebuild a saved run: config, frozen model, heads and the training log."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        msg = f"{path} not found: train a run first (furnace train --data DIR --out {run_dir})"
        raise FileNotFoundError(msg)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = config_from_dict(ckpt["log"]["config"])
    model = build_cmg(cfg.cmg)
    model.load_state_dict(ckpt["cmg"])
    model.eval()
    heads = {}
    for name, state in ckpt["heads"].items():
        heads[name] = DetectorHead.from_config(cfg.cmg)
        heads[name].load_state_dict(state)
        heads[name].eval()
    return cfg, model, heads, ckpt["log"]
