"""Metrics, configs and splits of the training pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from training.config import RunConfig, config_from_dict, config_to_dict, load_config
from training.evaluation.metrics import (
    auroc,
    conditions_with_evidence,
    decide,
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
    from training.evaluation.metrics import per_class_auroc

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


def test_decide_answers_like_the_service() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1, 0.0, 0.0, 0.0],  # below the threshold: normal
            [0.7, 0.2, 0.1, 0.0, 0.0, 0.0],  # above it (another modality's ratio): best abnormal
            [0.1, 0.1, 0.8, 0.0, 0.0, 0.0],  # above it: the most probable class
            [0.1, 0.1, 0.8, 0.0, 0.0, 0.0],  # confident, but at the threshold: normal
        ]
    )
    score = np.array([0.3, 1.5, 0.9, 0.5])
    np.testing.assert_array_equal(decide(probs, score, 0.5), [0, 1, 2, 0])


def test_target_rows_say_met_or_missed() -> None:
    from training.evaluation.report_eval import target_rows

    def row(f1: float, conditions: list[str], **extra: float) -> dict[str, object]:
        return {"macro_f1": f1, "macro_f1_all": f1, "conditions": conditions, **extra}

    zs = ["normal", "eruption", "abnormal_exhaust"]
    metrics = {
        "settings": {
            "fused": row(0.98, ["normal"]),
            "current_only": row(0.5, ["normal"]),
            "zero_shot_current_to_camera": row(0.45, zs, ratio_to_supervised=0.95),
            "ablation_sep_zero_shot_current_to_camera": row(0.36, zs),
            "ablation_sep_zero_shot_camera_to_current": row(0.6, zs),
            "ablation_shared_zero_shot_current_to_camera": row(0.6, zs),
        },
        "ablation_runs": {"sep": {"shared_codebook": False}, "shared": {"shared_codebook": True}},
    }
    got = {t: v for t, _, v in target_rows(metrics)}
    assert got["fused macro_f1_all >= 0.97"] == "met"
    assert got["current_only macro_f1 >= 0.93"] == "missed"
    assert got["zero_shot_current_to_camera >= 0.9 x supervised"] == "met"
    assert got["separate codebooks (sep): zero_shot_current_to_camera near chance (0.33)"] == "met"
    assert (
        got["separate codebooks (sep): zero_shot_camera_to_current near chance (0.33)"] == "missed"
    )
    assert len(got) == 5  # camera_only absent; the shared ablation is no separate-codebook run
