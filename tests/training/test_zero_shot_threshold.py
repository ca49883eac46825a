"""Label-free zero-shot thresholds by quantile matching (`training.decision.zero_shot_thresholds`,
docs/method.md deviation 14), on constructed scores and on an untrained model: no training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from model.cmg import build_cmg
from model.heads import DetectorHead
from tests.helpers.fmf_fixture import as_recording, make_episode
from tests.helpers.tiny_run import tiny_config
from training.data import make_windows
from training.decision import quantile_matched_threshold, window_probs, zero_shot_thresholds
from training.evaluation.metrics import threshold_for_false_alarm_rate
from training.train_head import encode_all


def test_matching_alarms_on_the_same_windows_whatever_the_target_scale() -> None:
    rng = np.random.default_rng(0)
    abnormal = rng.random(2000) < 0.1
    source = 0.05 * rng.random(2000) + 0.6 * abnormal * rng.random(2000)  # (N,)
    # The same furnace-time seen by another sensor: the same ranking on another scale, higher
    # everywhere (a head that is less sure of "normal" on the modality it was not trained on).
    target = 0.2 + 0.5 * source**3
    source_threshold = threshold_for_false_alarm_rate(source[~abnormal], 0.01)

    threshold, q = quantile_matched_threshold(source, target, source_threshold)

    assert q == np.mean(source > source_threshold) and 0.05 < q < 0.15
    np.testing.assert_array_equal(target > threshold, source > source_threshold)
    assert np.mean(target > source_threshold) == 1.0  # the unchanged threshold alarms always


def test_no_source_alarm_means_no_target_alarm() -> None:
    rng = np.random.default_rng(1)
    source, target = rng.random(500), rng.random(300) + 5.0
    threshold, q = quantile_matched_threshold(source, target, 2.0)
    assert q == 0.0 and threshold == target.max() and not (target > threshold).any()


def test_thresholds_of_both_directions_use_the_paired_windows_only() -> None:
    torch.manual_seed(0)
    cfg = tiny_config().cmg
    model = build_cmg(cfg).eval()
    heads = {m: DetectorHead.from_config(cfg).eval() for m in ("current", "camera")}
    ep = make_episode(seconds=400.0, event_s=(200.0, 300.0))
    val = make_windows(as_recording(ep))
    val = replace(val, valid_cam=val.valid_cam & (np.arange(len(val)) % 3 > 0))  # camera gaps
    paired = val.select(val.valid_cur & val.valid_cam)
    probs = {m: window_probs(model, heads[m], paired, encode_all(model, paired)) for m in heads}
    source = {m: 1.0 - probs[m][m][0][:, 0] for m in heads}
    thresholds = {m: {m: float(np.median(source[m]))} for m in heads}

    out = zero_shot_thresholds(model, heads, val, thresholds)

    assert set(out) == {"current_to_camera", "camera_to_current"}
    for src, dst in (("current", "camera"), ("camera", "current")):
        row = out[f"{src}_to_{dst}"]
        k = int(np.sum(source[src] > thresholds[src][src]))  # source alarms
        target = 1.0 - probs[src][dst][0][:, 0]
        assert row["windows"] == len(paired) < len(val)
        assert row["source_threshold"] == thresholds[src][src]
        assert row["alarm_share"] == k / len(paired)
        # as many target alarms as source alarms (fewer only where scores tie at the threshold)
        assert np.sum(target > row["threshold"]) <= k <= np.sum(target >= row["threshold"])
