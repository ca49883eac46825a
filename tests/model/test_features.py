"""In-graph input features (docs/design/cmg.md 2)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from model.cmg import CMG
from model.features import (
    camera_features,
    camera_inputs,
    current_features,
    frame_target,
    long_context_features,
)
from tests.model.factories import make_batch, make_tiny_cfg


def test_current_features_hand_case() -> None:
    # one window, two segments, S = 2 samples; phases A, B, C
    x_c = torch.tensor(
        [[[[1000.0, 2000.0, 3000.0], [3000.0, 2000.0, 1000.0]], [[0.0] * 3, [0.0] * 3]]]
    )  # (1, 2, 2, 3)
    baseline = torch.tensor([[2000.0, 1000.0, 4000.0]])
    f = current_features(x_c, baseline)
    assert f.shape == (1, 2, 3 * 2 + 16)
    seg = f[0, 0]
    raw = torch.tensor([1000.0, 2000.0, 3000.0, 3000.0, 2000.0, 1000.0]) / 20000.0
    torch.testing.assert_close(seg[:6], raw)
    mean = torch.tensor([2000.0, 2000.0, 2000.0])
    std = torch.tensor([1000.0, 0.0, 1000.0])  # population std over the two samples
    lo = torch.tensor([1000.0, 2000.0, 1000.0])
    hi = torch.tensor([3000.0, 2000.0, 3000.0])
    torch.testing.assert_close(seg[6:18], torch.cat([mean, std, lo, hi]) / 20000.0)
    torch.testing.assert_close(seg[18:21], torch.tensor([0.0, 1.0, -0.5]))  # (m - b) / b
    torch.testing.assert_close(seg[21], torch.tensor(0.0))  # equal phase means
    # second segment: power cut -> relative change -1, imbalance guarded to 0
    torch.testing.assert_close(f[0, 1, 18:], torch.tensor([-1.0, -1.0, -1.0, 0.0]))


def test_current_features_default_size_is_28_and_finite_on_zeros() -> None:
    f = current_features(torch.zeros(2, 8, 4, 3), torch.zeros(2, 3))
    assert f.shape == (2, 8, 28)
    assert bool(torch.isfinite(f).all()) and bool((f == 0).all())


def test_current_features_imbalance_and_clamped_relative() -> None:
    x_c = torch.tensor([1000.0, 2000.0, 3000.0]).expand(1, 1, 4, 3)
    f = current_features(x_c, torch.tensor([[0.5, 100.0, 3000.0]]))  # baseline <= 1 A guarded
    torch.testing.assert_close(f[0, 0, -4:], torch.tensor([0.0, 4.0, 0.0, 1.0]))


def test_camera_features_hand_case() -> None:
    x_v = torch.zeros(1, 3, 2, 2, 3, dtype=torch.uint8)
    x_v[0, 1] = 255
    x_v[0, 2, :, :, 0] = 51  # red 0.2, green/blue 0
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.25, 0.5])
    f = camera_features(x_v, mean, std)
    assert f.shape == (1, 3, 6, 2, 2)
    torch.testing.assert_close(f[0, 0, :3, 0, 0], torch.tensor([-1.0, -2.0, -1.0]))
    torch.testing.assert_close(f[0, 0, 3:], torch.zeros(3, 2, 2))  # no residual at t = 0
    torch.testing.assert_close(f[0, 1, 3:, 1, 1], torch.ones(3))
    torch.testing.assert_close(f[0, 2, 3:, 0, 1], torch.tensor([-0.8, -1.0, -1.0]))


def test_camera_inputs_are_the_two_halves_of_camera_features() -> None:
    g = torch.Generator().manual_seed(0)
    x_v = torch.randint(0, 256, (2, 3, 8, 8, 3), generator=g, dtype=torch.uint8)
    mean, std = torch.tensor([0.3, 0.4, 0.5]), torch.tensor([0.2, 0.3, 0.4])
    cam = camera_inputs(x_v, mean, std)
    torch.testing.assert_close(
        torch.cat([cam.standard, cam.diff], 2), camera_features(x_v, mean, std)
    )
    assert cam.standard.reshape(6, 3, 8, 8).is_contiguous(memory_format=torch.channels_last)
    expected = functional.avg_pool2d(
        x_v.float().permute(0, 1, 4, 2, 3).reshape(6, 3, 8, 8) / 255.0, 2
    )
    torch.testing.assert_close(frame_target(cam.pixels, 4), expected)


def test_long_context_features_hand_case() -> None:
    x_c = torch.full((1, 2, 4, 3), 1100.0)  # every segment at 1 100 A on each phase
    x_c[0, 1] = 1320.0
    baseline = torch.tensor([[1050.0, 1000.0, 1000.0, 1000.0, 1000.0, 0.5]])  # short | long
    f = long_context_features(x_c, baseline)  # (1, 2, 6)
    assert f.shape == (1, 2, 6)
    # (segment mean - long) / long, then (short - long) / long; 0 where long <= 1 A
    torch.testing.assert_close(f[0, 0], torch.tensor([0.1, 0.1, 0.0, 0.05, 0.0, 0.0]))
    torch.testing.assert_close(f[0, 1], torch.tensor([0.32, 0.32, 0.0, 0.05, 0.0, 0.0]))
    assert torch.isfinite(long_context_features(torch.zeros(2, 3, 4, 3), torch.zeros(2, 6))).all()


def test_a_long_context_model_reads_six_baseline_columns_and_says_so() -> None:
    cfg = make_tiny_cfg(current_context="long")
    model = CMG(cfg).eval()
    b = make_batch(cfg)
    long = torch.cat([b.baseline, b.baseline * 0.9], dim=1)  # (B, 6)
    z = model.encode("current", b.x_c, long)
    assert z.shape[:2] == (b.x_c.shape[0], cfg.segments)
    assert cfg.current_features == make_tiny_cfg().current_features + 6
    with pytest.raises(ValueError, match="baseline of 6 columns"):
        model.encode("current", b.x_c, b.baseline)
