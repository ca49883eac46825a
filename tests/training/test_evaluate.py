"""`furnace evaluate` on a tiny run: the metrics.json shape tools read, and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.evaluation.evaluate import evaluate
from training.evaluation.metrics import CONDITIONS_BY_SETTING

pytestmark = pytest.mark.heavy

CMG_ROWS = (
    "fused",
    "current_only",
    "camera_only",
    "zero_shot_current_to_camera",
    "zero_shot_camera_to_current",
)


def test_metrics_json_has_every_setting_in_the_documented_shape(
    tiny_run: Path, tiny_bundle: Path, easy_data: dict[str, Path], tmp_path: Path
) -> None:
    evaluate(tiny_run, easy_data["test"], tmp_path, baselines=False, progress=False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    settings = metrics["settings"]
    assert set(CMG_ROWS) <= set(settings)
    assert "ablation_average_fusion_fused" in settings  # the fusion rule's ablation
    for name in CMG_ROWS:
        row = settings[name]
        for key in ("macro_f1", "macro_f1_all", "auroc", "fdr", "mdr", "delay_s"):
            assert key in row, (name, key)
        assert row["conditions"] == CONDITIONS_BY_SETTING[name]
        assert 0.0 <= row["macro_f1"] <= 1.0 and 0.0 <= row["fdr"] <= 1.0
    # zero-shot: a label-free target threshold; the source threshold unchanged as an ablation
    thresholds = json.loads((tiny_run / "train_log.json").read_text())["thresholds"]
    for src, dst in (("current", "camera"), ("camera", "current")):
        row = settings[f"zero_shot_{src}_to_{dst}"]
        unchanged = settings[f"ablation_source_threshold_zero_shot_{src}_to_{dst}"]
        assert row["threshold_rule"] == "quantile_matched"
        assert unchanged["threshold_rule"] == "source"
        assert unchanged["threshold"] == row["source_threshold"] == thresholds[src][src]
        assert 0.0 <= row["calibration_alarm_share"] <= 1.0 and row["calibration_windows"] > 0
        # the threshold moves the alarms only, not the naming or the ranking
        for key in ("macro_f1", "auroc"):
            np.testing.assert_equal(unchanged[key], row[key])
    # the decision a bundle of this run makes: its graphs' heads, fused by the max rule
    shipped = metrics["shipped"]
    bundle = json.loads((tiny_bundle / "manifest.json").read_text())
    assert shipped["heads"] == bundle["heads"] and shipped["head"] == bundle["head"]
    assert shipped["fused"]["threshold"] == pytest.approx(bundle["thresholds"]["fused"])
    assert shipped["fused"]["n_windows"] == settings["fused"]["n_windows"]
    assert math.isfinite(shipped["fused"]["threshold"])
    for m in ("current", "camera"):
        assert shipped[f"{m}_only"]["n_windows"] == settings[f"{m}_only"]["n_windows"]
        assert shipped[f"{m}_only"]["threshold"] == pytest.approx(bundle["thresholds"][m])
    report = (tmp_path / "report.html").read_text()
    assert "zero_shot_current_to_camera" in report
