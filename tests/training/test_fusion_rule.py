"""The max-ratio fusion rule (training.decision.fuse_max) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.decision import fuse, fuse_max


def _probs(p_normal: list[float]) -> np.ndarray:
    p = np.zeros((len(p_normal), 3))
    p[:, 0] = p_normal
    p[:, 1] = 1.0 - np.asarray(p_normal)
    return p


def test_the_larger_threshold_ratio_decides() -> None:
    pc = _probs([0.9, 0.5, 0.99, 0.7])  # current scores 0.1, 0.5, 0.01, 0.3
    pv = _probs([0.5, 0.9, 0.95, 0.2])  # camera scores 0.5, 0.1, 0.05, 0.8
    valid_c = np.array([True, True, True, False])
    valid_v = np.array([True, True, False, False])
    probs = {"current": (pc, valid_c, None), "camera": (pv, valid_v, None)}
    fused, score = fuse_max(probs, {"current": 0.2, "camera": 0.8})
    # ratios: current 0.5, 2.5, 0.05; camera 0.625, 0.125, (invalid); neither valid in row 3
    assert score == pytest.approx([0.625, 2.5, 0.05, 0.0])
    assert np.array_equal(fused, fuse(probs))  # the condition comes from the average


def test_one_sensor_seeing_the_condition_is_not_diluted() -> None:
    # Breakage: current says abnormal, the camera (no evidence) says normal.
    pc, pv = _probs([0.1]), _probs([0.99])
    both = np.array([True])
    probs = {"current": (pc, both, None), "camera": (pv, both, None)}
    _, score = fuse_max(probs, {"current": 0.3, "camera": 0.3})
    assert score[0] == pytest.approx(0.9 / 0.3)  # 3x the current threshold
    assert 1.0 - fuse(probs)[0, 0] == pytest.approx(0.455)  # averaging halves the evidence
