"""Factories for the model tests: tiny seeded configurations and paired synthetic windows."""

from __future__ import annotations

from typing import NamedTuple

import torch

from model.config import CMGConfig, CodebookConfig, EncoderConfig


class Batch(NamedTuple):
    x_c: torch.Tensor  # (B, T, S, 3) A
    baseline: torch.Tensor  # (B, 3) A
    x_v: torch.Tensor  # (B, T, H, W, 3) uint8


def make_tiny_cfg(**changes: object) -> CMGConfig:
    """K = 16, D = 8, T = 4, 16-px frames, 8-px reconstruction, tiny convs."""
    enc = EncoderConfig(
        dim=8,
        layers=1,
        heads=2,
        ff=16,
        stem_channels=(4, 8),
        specific_channels=(4, 8),
        se_reduction=2,
        decoder_channels=4,
    )
    book = CodebookConfig(size=16, dim=8, dead_after=4, donor_within=2)
    base: dict[str, object] = {
        "encoder": enc,
        "codebook": book,
        "segments": 4,
        "samples_per_segment": 4,
        "frame_px": 16,
        "recon_px": 8,
        "club_width": 8,
        "club_steps": 2,
    }
    base.update(changes)
    return CMGConfig(**base)  # type: ignore[arg-type]


def make_batch(cfg: CMGConfig, B: int = 6, seed: int = 0) -> Batch:
    """Random paired windows: currents around 12 kA, uint8 frames."""
    g = torch.Generator().manual_seed(seed)
    T, S, px = cfg.segments, cfg.samples_per_segment, cfg.frame_px
    baseline = 10000.0 + 4000.0 * torch.rand(B, 3, generator=g)
    x_c = baseline[:, None, None, :] * (1.0 + 0.1 * torch.randn(B, T, S, 3, generator=g))
    x_v = torch.randint(0, 256, (B, T, px, px, 3), generator=g, dtype=torch.uint8)
    return Batch(x_c.clamp(0.0, 20000.0), baseline, x_v)
