"""Detector head and score convention (docs/design/cmg.md 3 "head", 7)."""

from __future__ import annotations

import torch

from model.heads import DetectorHead, anomaly_score
from tests.model.factories import make_tiny_cfg


def test_anomaly_score_is_one_minus_normal() -> None:
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.3, 0.6]])
    torch.testing.assert_close(anomaly_score(probs), torch.tensor([0.1, 0.9]))


def test_head_shapes_and_max_over_segments() -> None:
    torch.manual_seed(0)
    cfg = make_tiny_cfg()
    head = DetectorHead.from_config(cfg)
    q = torch.randn(5, cfg.segments, cfg.encoder.dim)
    out = head(q)
    assert out.logits.shape == (5, cfg.n_classes)
    assert out.segment_scores.shape == (5, cfg.segments)
    assert bool(((out.segment_scores >= 0) & (out.segment_scores <= 1)).all())
    shuffled = head(q[:, torch.randperm(cfg.segments)])
    torch.testing.assert_close(shuffled.logits, out.logits)  # max over T ignores order
    hidden = torch.relu(head.hidden(q)).amax(dim=1)
    torch.testing.assert_close(out.logits, head.out(hidden))
