"""A tiny CMG run end to end on easy simulated data: train, select, calibrate, save, reload,
score; same seed -> same result. (Quality is measured by `furnace evaluate`, docs/results.md.)"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny_run import tiny_config
from training.data.splits import load_recordings, windows_of
from training.decision import window_probs
from training.run import load_run, train_run

pytestmark = pytest.mark.heavy


def test_tiny_run_trains_end_to_end(tiny_run: Path, easy_data: dict[str, Path]) -> None:
    log = json.loads((tiny_run / "train_log.json").read_text())
    assert [row["step"] for row in log["selection"]] == [30.0, 60.0]
    assert log["selected_step"] in (30, 60)
    for key in (
        "perplexity_c",
        "perplexity_v",
        "step_agreement",
        "cpc_acc_c2v",
        "shared_code_fraction",
    ):
        assert key in log["diagnostics"][-1]
    assert set(log["thresholds"]) == {"current", "camera", "both"}
    for thresholds in log["thresholds"].values():
        assert set(thresholds) == {"current", "camera", "fused", "fused_average"}
        # fused is on the threshold-ratio scale (training.decision.fuse_max), the rest on 1 - p
        assert all(0.0 <= thresholds[k] <= 1.0 for k in ("current", "camera", "fused_average"))
        assert thresholds["fused"] >= 0.0
    _, model, heads, _ = load_run(tiny_run)
    recs = load_recordings(easy_data["test"])
    test = windows_of(recs, window_s=16.0, hop_s=4.0, baseline_s=120.0)
    probs = window_probs(model, heads["current"], test)
    _, model2, heads2, _ = load_run(tiny_run)
    again = window_probs(model2, heads2["current"], test)
    for m in ("current", "camera"):
        p, valid, enc = probs[m]
        assert valid.any()
        assert np.allclose(p.sum(1), 1.0, atol=1e-5)
        assert enc.codes.min() >= 0 and enc.codes.max() < 16
        assert np.array_equal(p, again[m][0])  # a reloaded run scores identically


def test_same_seed_same_run(easy_data: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(seed=3)
    cfg = replace(cfg, train=replace(cfg.train, steps=10, checkpoint_every=10, head_epochs=2))
    a = torch.load(train_run(easy_data["train"], tmp_path / "a", cfg, progress=False))
    b = torch.load(train_run(easy_data["train"], tmp_path / "b", cfg, progress=False))
    for key, value in a["cmg"].items():
        assert torch.equal(value, b["cmg"][key]), key
    assert a["log"]["thresholds"] == b["log"]["thresholds"]
    assert np.isfinite(a["log"]["thresholds"]["current"]["current"])
