"""Metrics, configs and splits of the training pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.config import RunConfig, config_from_dict, config_to_dict, load_config
from training.metrics import (
    auroc,
    conditions_with_evidence,
    detection_delays,
    fdr_mdr,
    macro_f1,
    summarise_setting,
    threshold_for_false_alarm_rate,
)


def test_conditions_with_evidence_follow_furnace_md() -> None:
    assert conditions_with_evidence(["current", "camera"]) == [
        "normal",
        "eruption",
        "abnormal_exhaust",
    ]
    assert "electrode_breakage" in conditions_with_evidence(["current"])
    assert "electrode_breakage" not in conditions_with_evidence(["camera"])
    assert "semi_molten" not in conditions_with_evidence(["current"])
    assert len(conditions_with_evidence([], "none")) == 6


def test_macro_f1_scores_only_listed_conditions() -> None:
    y = np.array([0, 0, 3, 3, 5, 5])
    pred = np.array([0, 0, 3, 0, 0, 0])
    # class 5 is not listed: its windows are not scored
    f1 = macro_f1(y, pred, ["normal", "eruption"])
    assert f1 == pytest.approx((0.8 + 2 / 3) / 2)
    assert macro_f1(y, y, ["normal", "eruption", "electrode_breakage"]) == 1.0


def test_auroc_fdr_mdr_and_threshold() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000, int), np.ones(200, int)]
    score = np.r_[rng.normal(0, 1, 1000), rng.normal(3, 1, 200)]
    assert 0.95 < auroc(y, score) < 1.0
    thr = threshold_for_false_alarm_rate(score[:1000], 0.01)
    fdr, mdr = fdr_mdr(y, score, thr)
    assert fdr <= 0.01 and 0.0 < mdr < 0.3
    with pytest.raises(ValueError, match="no normal"):
        threshold_for_false_alarm_rate(np.array([]), 0.01)


def test_detection_delay_needs_k_of_n() -> None:
    t = np.arange(0, 100, 2.0)
    alarm = np.zeros_like(t, bool)
    alarm[[20, 25, 26]] = True  # t = 40 alone; 50 and 52 together
    rec = np.array(["r"] * t.size)
    events = {"r": [{"onset_s": 30.0, "end_s": 90.0}], "other": [{"onset_s": 0, "end_s": 5}]}
    delays = detection_delays(recording=rec, t_end=t, alarm=alarm, events=events, k=2, n=3)
    assert delays == [22.0]


def test_summarise_setting_shape() -> None:
    y = np.array([0, 0, 1, 3])
    probs = np.eye(6)[[0, 1, 1, 3]] * 0.9 + 0.1 / 6
    row = summarise_setting(y_true=y, probs=probs, threshold=0.5, conditions=["normal", "eruption"])
    for key in ("macro_f1", "macro_f1_all", "auroc", "fdr", "mdr", "delay_s", "conditions"):
        assert key in row
    assert row["fdr"] == 0.5 and row["mdr"] == 0.0


def test_config_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    cfg = RunConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: 7\ncmg:\n  codebook:\n    size: 32\n")
    loaded = load_config(path)
    assert loaded.train.steps == 7 and loaded.cmg.codebook.size == 32
    path.write_text("train:\n  stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(path)
    with pytest.raises(ValueError, match="label_modality"):
        config_from_dict({"train": {"label_modality": "sound"}})


def test_per_class_auroc_ranks_each_condition_against_normal_only() -> None:
    from training.metrics import per_class_auroc

    y = np.array([0, 0, 1, 1, 2])
    probs = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.5, 0.4, 0.1],
            [0.9, 0.0, 0.1],  # class 2 scores like normal: its AUROC is not 1
        ]
    )
    out = per_class_auroc(y, probs, ("normal", "a", "b"))
    assert out["a"] == 1.0
    assert out["b"] == 0.75  # p(b) = 0.1 beats one normal window and ties the other
    assert math.isnan(per_class_auroc(y[:2], probs[:2], ("normal", "a", "b"))["a"])
