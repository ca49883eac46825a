"""`furnace evaluate`: every setting of the results table on held-out furnaces and seeds.

Settings (metrics.json names): fused, current_only, camera_only, zero_shot_current_to_camera,
zero_shot_camera_to_current; `ablation_<what>_<setting>` for ablation runs given alongside;
`baseline_<what>_<setting>` for the peer baselines, trained here on the run's training data.
Zero-shot rows apply a label-free target threshold, matched to the source threshold's alarm share
on paired validation windows (`training.decision.zero_shot_thresholds`, docs/method.md
deviation 14); `ablation_source_threshold_zero_shot_<src>_to_<dst>` keep the source modality's
threshold unchanged (docs/design/cmg.md 7.6).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from simulator.config import EVIDENCE
from training.config import RunConfig
from training.data import MODALITIES, Windows
from training.data.fmf import Recording
from training.data.splits import SplitData, load_recordings, windows_of
from training.decision import (
    fuse,
    fused_decision,
    head_label,
    mixed_probs,
    shipped_heads,
    window_probs,
    zero_shot_thresholds,
)
from training.evaluation.metrics import score_setting
from training.run import load_run, split_for
from training.train_head import Encoded, encode_all

logger = logging.getLogger(__name__)


def cmg_settings(
    run: tuple[Any, ...],
    test: Windows,
    events: dict[str, Any],
    enc: dict[str, Encoded],
    zero_shot: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The five CMG settings of one loaded run (`load_run`) on test windows and their codes.

    `zero_shot` (`training.decision.zero_shot_thresholds`) gives the zero-shot rows their target
    thresholds and adds `ablation_source_threshold_<row>` with the source threshold unchanged;
    None keeps the source threshold in the zero-shot rows.
    """
    _, model, heads, log = run
    thr = log["thresholds"]
    both_valid = test.valid_cur & test.valid_cam
    rows: dict[str, Any] = {}
    p_both = window_probs(model, heads["both"], test, enc)
    thr_both = thr["both"]
    probs, score = fused_decision(p_both, thr_both)
    rows["fused"] = score_setting(
        "fused", test, probs, both_valid, thr_both["fused"], events, score=score
    )
    if "fused_average" in thr_both:  # runs trained since fusion became the max rule
        rows["ablation_average_fusion_fused"] = score_setting(
            "fused", test, fuse(p_both), both_valid, thr_both["fused_average"], events
        )
    for m in MODALITIES:
        p, valid, _ = window_probs(model, heads[m], test, enc)[m]
        rows[f"{m}_only"] = score_setting(f"{m}_only", test, p, valid, thr[m][m], events)
    unchanged = {}
    for src, dst in (("current", "camera"), ("camera", "current")):
        p, valid, _ = window_probs(model, heads[src], test, enc)[dst]
        name = f"zero_shot_{src}_to_{dst}"
        matched = (zero_shot or {}).get(f"{src}_to_{dst}")
        row = score_setting(
            name, test, p, valid, matched["threshold"] if matched else thr[src][src], events
        )
        row["threshold_rule"] = "quantile_matched" if matched else "source"
        row["source_threshold"] = thr[src][src]
        if matched:
            row["calibration_alarm_share"] = matched["alarm_share"]
            row["calibration_windows"] = matched["windows"]
            source_row = score_setting(name, test, p, valid, thr[src][src], events)
            source_row["threshold_rule"] = "source"
            unchanged[f"ablation_source_threshold_{name}"] = source_row
        # The same conditions scored with the target modality's own supervised head.
        p_sup, _, _ = window_probs(model, heads[dst], test, enc)[dst]
        sup = score_setting(name, test, p_sup, valid, thr[dst][dst], events)
        row["supervised_target_macro_f1"] = sup["macro_f1"]
        row["ratio_to_supervised"] = (
            row["macro_f1"] / sup["macro_f1"] if sup["macro_f1"] > 0 else float("nan")
        )
        rows[name] = row
    return rows | unchanged


def training_split(
    run: tuple[Any, ...], recordings: dict[str, list[Recording]] | None = None
) -> SplitData | None:
    """The run's own train / validation split of its training data (None where the data are
    gone), read once per dataset path when `recordings` is kept between calls."""
    cfg, _, _, log = run
    path = Path(log["data"]["path"])
    if not path.exists():
        logger.warning("training data %s not found: zero-shot rows keep the source threshold", path)
        return None
    cache = {} if recordings is None else recordings
    if str(path) not in cache:
        cache[str(path)] = load_recordings(path)
    return split_for(cfg, cache[str(path)])


def calibrate_zero_shot(
    run: tuple[Any, ...], data: SplitData | None
) -> dict[str, dict[str, float]] | None:
    """Label-free zero-shot thresholds of a loaded run on its validation windows (None: none)."""
    if data is None:
        return None
    _, model, heads, log = run
    return zero_shot_thresholds(model, heads, data.val, log["thresholds"])


def shipped_decision(
    run: tuple[Any, ...],
    test: Windows,
    events: dict[str, Any],
    enc: dict[str, Encoded],
    data: SplitData | None = None,
) -> dict[str, Any]:
    """What a bundle exported from this run decides (`training.decision.shipped_heads`, as
    `furnace export` picks them on the run's validation windows): `fused` with both sensors
    healthy, `current_only` and `camera_only` (each graph's head against its own threshold)
    with the other sensor down. Without the training data (`data` None) the `label_modality`
    head for both, with its own thresholds (bundles exported before per-modality heads).
    The `fused` row of `settings` uses the head trained on both modalities' labels.
    """
    cfg, model, heads, log = run
    if data is None:
        chosen = dict.fromkeys(MODALITIES, cfg.train.label_modality)
        thr = log["thresholds"][cfg.train.label_modality]
    else:
        selection, thr = shipped_heads(model, heads, log["thresholds"], data.val, log["target_far"])
        chosen = selection.heads
    probs = mixed_probs(model, {m: heads[chosen[m]] for m in MODALITIES}, test, enc)
    both_valid = test.valid_cur & test.valid_cam
    fused_probs, score = fused_decision(probs, thr)
    out: dict[str, Any] = {"head": head_label(chosen), "heads": chosen}
    out["fused"] = score_setting(
        "fused", test, fused_probs, both_valid, thr["fused"], events, score=score
    )
    for m in MODALITIES:
        p, valid, _ = probs[m]
        out[f"{m}_only"] = score_setting(f"{m}_only", test, p, valid, thr[m], events)
    return out


def baseline_settings(
    data: SplitData, test: Windows, events: dict[str, Any], seed: int, target_far: float
) -> dict[str, Any]:
    """Peer baselines trained on the run's training windows, calibrated on its validation."""
    from training.evaluation.baselines import fit_gbm, fit_iforest
    from training.evaluation.metrics import threshold_for_false_alarm_rate

    rows: dict[str, Any] = {}
    tr, va = data.train.select(data.train.valid_cur), data.val.select(data.val.valid_cur)
    valid = test.valid_cur
    for kind in ("gbm", "iforest"):
        if kind == "gbm":
            model = fit_gbm(tr.x_c, tr.baseline, tr.label, seed=seed)
        else:
            normal = tr.select(tr.label == 0)
            model = fit_iforest(normal.x_c, normal.baseline, seed=seed)
        p_val = model.predict_proba(va.x_c, va.baseline)
        thr = threshold_for_false_alarm_rate(1.0 - p_val[va.label == 0, 0], target_far)
        probs = model.predict_proba(test.x_c, test.baseline)
        row = score_setting("current_only", test, probs, valid, thr, events)
        if kind == "iforest":  # no condition names: only detection figures are meaningful
            row["macro_f1"] = row["macro_f1_all"] = row["macro_f1_decision"] = float("nan")
        rows[f"baseline_{kind}_current_only"] = row
    return rows


def evaluate(
    run_dir: str | Path,
    test_dir: str | Path,
    out_dir: str | Path,
    *,
    ablations: dict[str, str] | None = None,
    baselines: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run (plus ablation runs and baselines) and write metrics.json + report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = load_run(run_dir)
    cfg, model, _, log = run
    tc = cfg.train
    recs = load_recordings(test_dir)
    train_furnaces = set(log["data"]["furnaces"]["train"]) | set(log["data"]["furnaces"]["val"])
    overlap = sorted({r.furnace_id or r.name for r in recs} & train_furnaces)
    if overlap:
        msg = f"test data share furnaces with training ({overlap}): simulate with another --seed"
        raise ValueError(msg)
    cut: dict[tuple[float, ...], Windows] = {}

    def windows_for(c: RunConfig) -> Windows:  # runs may differ in their baselines' horizons
        key = tuple(c.train.window_args.values())
        if key not in cut:
            cut[key] = windows_of(recs, **c.train.window_args)
        return cut[key]

    test = windows_for(cfg)
    events = {r.name: list(r.events or []) for r in recs}
    enc = encode_all(model, test)
    recordings: dict[str, list[Recording]] = {}  # training data by path, read once
    data = training_split(run, recordings)
    settings = cmg_settings(run, test, events, enc, calibrate_zero_shot(run, data))
    ablation_runs = {}
    for what, path in (ablations or {}).items():
        ablation = load_run(path)
        ablation_runs[what] = {"run": str(path), "shared_codebook": ablation[0].cmg.shared_codebook}
        ablation_test = windows_for(ablation[0])
        ablation_codes = encode_all(ablation[1], ablation_test)
        zero_shot = calibrate_zero_shot(ablation, training_split(ablation, recordings))
        rows = cmg_settings(ablation, ablation_test, events, ablation_codes, zero_shot)
        for name, row in rows.items():
            if not name.startswith("ablation_"):  # fusion-rule and threshold rows: main run only
                settings[f"ablation_{what}_{name}"] = row
    if baselines:
        if data is None:
            msg = f"training data {log['data']['path']} not found: the baselines train on them"
            raise FileNotFoundError(msg)
        settings |= baseline_settings(data, test, events, tc.seed, tc.target_far)
        from training.evaluation.two_stream_peer import fusion_settings

        settings |= fusion_settings(
            data, test, events, seed=tc.seed, target_far=tc.target_far, progress=progress
        )
    metrics = {
        "run": str(run_dir),
        "test_data": str(Path(test_dir).resolve()),
        "test_furnaces": sorted({r.furnace_id or r.name for r in recs}),
        "evidence": EVIDENCE,
        "settings": settings,
        "shipped": shipped_decision(run, test, events, enc, data),
        "ablation_runs": ablation_runs,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    from training.evaluation.report_eval import write_eval_report

    write_eval_report(out, metrics, run=run, run_dir=run_dir, test=test, encoded=enc)
    return metrics
