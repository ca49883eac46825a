"""`furnace train`: pre-train CMG without labels, select a checkpoint and train heads on the
source modality's labels only, calibrate thresholds, save the run (docs/design/cmg.md section 7).

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
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import SplitData, load_recordings, paired_mask, split_by_furnace
from training.decision import calibrate, source_modalities
from training.pretrain import pretrain
from training.train_head import encode_all, encode_windows, train_head

logger = logging.getLogger(__name__)
SELECT_MAX_WINDOWS = 6000  # labelled training windows per checkpoint during selection


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


def labelled_modalities(data: SplitData) -> tuple[str, ...]:
    """The modalities with labelled windows in both the training and the validation split.

    A window's label is the plant's (time-interval) label at its end, valid for every sensor
    that recorded the window, so a modality has labels wherever it has valid windows.
    """
    return tuple(
        m for m in MODALITIES if valid_for(data.train, m).any() and valid_for(data.val, m).any()
    )


def fit_heads(
    model: CMG, cfg: RunConfig, data: SplitData, *, limit: int | None = None
) -> tuple[dict[str, DetectorHead], dict[str, dict[str, float]]]:
    """One head per source choice (current, camera, both) on the frozen model.

    A head is trained only when every modality of its source has labelled windows in both
    splits (`labelled_modalities`); the others are left out (logged), and the export falls
    back to a zero-shot head for a modality without one (`training.decision.select_heads`).

    Raises:
        ValueError: when no modality has labelled windows in both splits.
    """
    n = limit or len(data.train)
    heads, figures = {}, {}
    cache: dict[tuple[int, str], tuple[torch.Tensor, NDArray[np.int64]]] = {}
    have = labelled_modalities(data)
    if not have:
        msg = "no labelled windows of either modality in both the training and validation splits"
        raise ValueError(msg)
    for source in ("current", "camera", "both"):
        mods = source_modalities(source)
        missing = [m for m in mods if m not in have]
        if missing:
            logger.warning(
                "no %r head: no labelled %s windows in the training or validation split",
                source,
                " or ".join(missing),
            )
            continue
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


def train_run(
    data_dir: str | Path, out_dir: str | Path, cfg: RunConfig, *, progress: bool = True
) -> Path:
    """The whole `furnace train` job. Returns the checkpoint path.

    `train_log.json` records the seconds of each phase (`phase_seconds`: loading, pre-training,
    checkpoint selection, heads, threshold calibration) beside the total.
    """
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
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
    phases["load"] = time.perf_counter() - t0
    result = pretrain(cfg, pre_train, pre_val, progress=progress)
    phases["pretrain"] = result.seconds
    t1 = time.perf_counter()
    best, selection = select_checkpoint(cfg, data, result.checkpoints)
    phases["selection"] = time.perf_counter() - t1
    step, state = result.checkpoints[best]
    model = build_cmg(cfg.cmg)
    model.load_state_dict(state)
    model.eval()
    t1 = time.perf_counter()
    heads, head_figures = fit_heads(model, cfg, data)
    phases["heads"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    # Thresholds of every head, each calibrated on validation normals (the export picks a
    # head per modality from them: training.decision.select_heads).
    val_codes = encode_all(model, data.val)
    thresholds = {
        k: calibrate(model, h, data.val, tc.target_far, val_codes) for k, h in heads.items()
    }
    phases["calibration"] = time.perf_counter() - t1
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
        "phase_seconds": phases,
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
