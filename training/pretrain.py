"""Label-free CMG pre-training on paired windows (docs/design/cmg.md section 4), with checkpoints
and the diagnostics of docs/design/cmg.md section 9 on a fixed set of validation windows.

Batches are drawn uniformly over all paired training windows, so every batch mixes episodes
and furnaces (docs/design/cmg.md 10.8); labels never reach this module (docs/design/cmg.md 10.6).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from model.cmg import CMG, build_cmg
from training.config import RunConfig
from training.data import Windows

logger = logging.getLogger(__name__)
DIAG_WINDOWS = 512  # fixed validation windows for the diagnostics


@dataclass
class PretrainResult:
    model: CMG  # the model after the last step
    checkpoints: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (step, state)
    history: list[dict[str, float]] = field(default_factory=list)  # diagnostics per checkpoint
    seconds: float = 0.0


def camera_stats(w: Windows, max_frames: int = 4096, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and std of training frames in [0, 1] (manifest constants)."""
    rng = np.random.default_rng(seed)
    bank = w.frame_bank
    idx = rng.choice(len(bank), size=min(max_frames, len(bank)), replace=False)
    frames = bank[np.sort(idx)].reshape(-1, 3).astype(np.float64) / 255.0
    mean = torch.tensor(frames.mean(0), dtype=torch.float32)
    std = torch.tensor(np.maximum(frames.std(0), 1e-3), dtype=torch.float32)
    return mean, std


def resolve_device(name: str) -> torch.device:
    """`TrainConfig.device` -> a torch device ("auto": CUDA when available, else the CPU).

    Raises:
        ValueError: "cuda" asked for on a machine without a usable CUDA GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        msg = "train.device is cuda but torch sees no CUDA GPU: use auto or cpu"
        raise ValueError(msg)
    return torch.device(name)


def _batch(
    w: Windows, idx: NDArray[np.int64], device: torch.device | None = None
) -> tuple[torch.Tensor, ...]:
    out = (
        torch.from_numpy(w.x_c[idx]),
        torch.from_numpy(w.baseline[idx]),
        torch.from_numpy(w.camera(idx)),
    )
    if device is None or device.type == "cpu":
        return out
    return tuple(t.to(device, non_blocking=True) for t in out)


def _cpu_state(model: CMG) -> dict[str, torch.Tensor]:
    """A snapshot of the weights on the CPU (checkpoints never hold GPU memory)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _clip_per_module(model: CMG, max_norm: float) -> None:
    """Clip the gradient norm of each top-level module separately (as the released code)."""
    for params in model.clip_groups().values():
        with_grad = [p for p in params if p.grad is not None]
        if with_grad:
            nn.utils.clip_grad_norm_(with_grad, max_norm)


def train_step(
    model: CMG,
    batch: tuple[torch.Tensor, ...],
    opt: torch.optim.Optimizer,
    club_opt: torch.optim.Optimizer | None,
    grad_clip: float,
    labels: torch.Tensor | None = None,
) -> Any:
    """One pre-training step: forward (CLUB q-nets fitted inside it, on the same encodings:
    the released order), backward, per-module clipping, Adam. Returns the model's output."""
    out = model(*batch, club_optimizer=club_opt, labels=labels)
    opt.zero_grad()
    out.loss.total.backward()
    _clip_per_module(model, grad_clip)
    opt.step()
    return out


@torch.no_grad()
def diagnostics(
    model: CMG,
    w: Windows,
    idx: NDArray[np.int64],
    batch: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean of the model's diagnostics and losses over fixed paired windows, in eval mode."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    codes_c, codes_v = [], []
    for s in range(0, idx.size, batch):
        b = idx[s : s + batch]
        if b.size < 2:
            continue
        out = model(*_batch(w, b, device))
        for key, value in {**out.diagnostics, **out.loss._asdict()}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * b.size
        codes_c.append(out.codes_c.cpu().numpy())
        codes_v.append(out.codes_v.cpu().numpy())
        n += b.size
    model.train()
    result = {k: v / max(n, 1) for k, v in sums.items()}
    if codes_c:
        cc, cv = np.concatenate(codes_c).ravel(), np.concatenate(codes_v).ravel()
        k = model.codebook_for("current").shape[0]
        hc, hv = np.bincount(cc, minlength=k), np.bincount(cv, minlength=k)
        active = (hc + hv) > 0
        share = np.minimum(hc, hv) / np.maximum(hc + hv, 1)
        # Shared code: each modality accounts for >= 20 % of its uses (docs/design/cmg.md 9).
        result["shared_code_fraction"] = (
            float((share[active] >= 0.2).mean()) if active.any() else 0.0
        )
        result["codes_used_current"] = float((hc > 0).sum())
        result["codes_used_camera"] = float((hv > 0).sum())
    return result


def pretrain(
    cfg: RunConfig, train: Windows, val: Windows, *, progress: bool = True
) -> PretrainResult:
    """Pre-train CMG on paired training windows; snapshot every `checkpoint_every` steps.

    Args:
        cfg: run config.
        train: paired training windows (both modalities valid).
        val: paired validation windows (diagnostics only).
        progress: tqdm bar with live losses and code usage.

    Runs on `train.device` (a GPU when present and "auto"); checkpoints and the returned
    model are on the CPU. GPU runs are not bit-identical to CPU runs.
    """
    tc = cfg.train
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    if len(train) < tc.batch:
        msg = f"only {len(train)} paired training windows for batch {tc.batch}: simulate more data"
        raise ValueError(msg)
    device = resolve_device(tc.device)
    model = build_cmg(cfg.cmg)
    model.set_camera_stats(*camera_stats(train, seed=tc.seed))
    model.to(device)
    model.train()
    with torch.no_grad():  # data-initialised codebook (docs/design/cmg.md 5 #13)
        init = rng.choice(len(train), size=min(len(train), 4 * tc.batch), replace=False)
        x_c, base, x_v = _batch(train, np.sort(init), device)
        model.init_codebook_from(model.encode("current", x_c, base), model.encode("camera", x_v))
    opt = torch.optim.Adam(model.main_parameters(), lr=tc.lr)
    club_params = model.club_parameters()
    club_opt = torch.optim.Adam(club_params, lr=cfg.cmg.club_lr) if club_params else None
    diag_idx = np.sort(rng.choice(len(val), size=min(DIAG_WINDOWS, len(val)), replace=False))
    result = PretrainResult(model=model)
    t0 = time.perf_counter()
    bar = tqdm(range(1, tc.steps + 1), desc="pre-train", disable=not progress, unit="step")
    for step in bar:
        idx = rng.choice(len(train), size=tc.batch, replace=False)
        batch = _batch(train, idx, device)
        labels = None
        if cfg.cmg.supervised_weight > 0:  # the labelled modality's labels [ours]
            labels = torch.from_numpy(train.label[idx]).to(batch[0].device)
        out = train_step(model, batch, opt, club_opt, tc.grad_clip, labels)
        if step % 10 == 0:
            d = out.diagnostics
            bar.set_postfix(
                loss=f"{float(out.loss.total.detach()):.3f}",
                ppl_c=f"{float(d['perplexity_c']):.0f}",
                ppl_v=f"{float(d['perplexity_v']):.0f}",
                agree=f"{float(d['step_agreement']):.2f}",
            )
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            diag = diagnostics(model, val, diag_idx, tc.batch, device)
            diag["step"] = float(step)
            diag["seconds"] = time.perf_counter() - t0
            result.history.append(diag)
            result.checkpoints.append((step, _cpu_state(model)))
            logger.info(
                "step %d: %s",
                step,
                ", ".join(f"{k}={v:.3g}" for k, v in sorted(diag.items()) if k != "step"),
            )
    result.seconds = time.perf_counter() - t0
    model.to("cpu")
    model.eval()
    return result
