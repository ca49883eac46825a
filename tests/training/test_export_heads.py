"""The head each graph ships (training.decision.select_heads, docs/export.md "Heads"): per
modality the best on validation among the heads trained with its labels, a zero-shot head only
when there is none, an explicit choice when given; the fused threshold re-calibrated for the
pair; the graphs carry their own heads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from numpy.typing import NDArray
from sklearn.metrics import f1_score, roc_auc_score

from model.scorer import ModalityScorer
from service.bundle import verify_bundle
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import SplitData, load_recordings
from training.decision import calibrate
from training.export import export_bundle, scorer_inputs, torch_outputs
from training.run import fit_heads, load_run, split_for

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def split(tiny_run: Path, easy_data: dict[str, Path]) -> SplitData:
    cfg, _, _, _ = load_run(tiny_run)
    return split_for(cfg, load_recordings(easy_data["train"]))


@pytest.fixture(scope="module")
def mixed_bundle(
    tiny_run: Path, easy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`--head both --head-camera camera`: the current graph on `both`, the camera on `camera`."""
    out = tmp_path_factory.mktemp("mixed") / "mixed"
    export_bundle(
        tiny_run, out, data_dir=easy_data["train"], head="both", heads={"camera": "camera"}
    )
    return out


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _probs(scorer: ModalityScorer, w: Windows, index: NDArray[np.int64]) -> NDArray[np.float64]:
    """The torch scorer's probabilities (the exported graph's reference) of windows `index`."""
    parts = [
        torch_outputs(scorer, scorer_inputs(w, scorer.modality, index[s : s + 256]))["probs"]
        for s in range(0, index.size, 256)
    ]
    return np.concatenate(parts).astype(np.float64)


def test_default_selection_is_the_best_validation_decision_among_heads_with_its_labels(
    tiny_bundle: Path, tiny_run: Path, split: SplitData
) -> None:
    raw = _manifest(tiny_bundle)
    _, model, heads, log = load_run(tiny_run)
    assert set(heads) == {"current", "camera", "both"}
    val = split.val
    for m in MODALITIES:
        sel = raw["head_selection"][m]
        assert sel["rule"] == "best_validation_macro_f1"
        assert sel["candidates"] == [m, "both"]  # never the head trained on the other sensor
        assert raw["heads"][m] == sel["head"] in (m, "both")
        index = np.flatnonzero(valid_for(val, m))
        y = val.label[index]
        assert sel["windows"] == index.size
        present = np.unique(y).tolist()
        keys = {}
        for name in (m, "both"):  # by hand: the service's decision with each candidate
            p = _probs(ModalityScorer(model, heads[name], m), val, index)
            score, thr = 1.0 - p[:, 0], log["thresholds"][name][m]
            top = p.argmax(1)
            named = np.where(top == 0, 1 + p[:, 1:].argmax(1), top)
            decided = np.where(score > thr, named, 0)
            f1 = f1_score(y, decided, labels=present, average="macro", zero_division=0)
            au = roc_auc_score(y != 0, score)
            assert sel["figures"][name]["macro_f1_decision"] == pytest.approx(f1, abs=1e-6)
            assert sel["figures"][name]["auroc"] == pytest.approx(au, abs=1e-6)
            keys[name] = (f1, au)
        best = max((m, "both"), key=lambda n: keys[n])  # the first on a tie
        assert raw["heads"][m] == best
    names = [raw["heads"][m] for m in MODALITIES]
    assert raw["head"] == (
        names[0] if names[0] == names[1] else f"current={names[0]},camera={names[1]}"
    )


def test_an_explicit_choice_is_honoured_and_each_graph_carries_its_own_head(
    mixed_bundle: Path, tiny_run: Path, split: SplitData
) -> None:
    raw = _manifest(mixed_bundle)
    assert raw["heads"] == {"current": "both", "camera": "camera"}
    assert raw["head"] == "current=both,camera=camera"
    assert {raw["head_selection"][m]["rule"] for m in MODALITIES} == {"explicit"}
    manifest = verify_bundle(mixed_bundle)  # the service's reader
    assert manifest.heads == raw["heads"] and manifest.head == raw["head"]

    _, model, heads, _ = load_run(tiny_run)
    val = split.val
    for m, shipped, other in (("current", "both", "current"), ("camera", "camera", "both")):
        session = ort.InferenceSession(str(mixed_bundle / f"{m}.onnx"))
        index = np.flatnonzero(valid_for(val, m))[:64]
        feeds = scorer_inputs(val, m, index)
        got = dict(zip(("codes", "quantized", "probs"), session.run(None, feeds)[:3], strict=True))
        ref = torch_outputs(ModalityScorer(model, heads[shipped], m), feeds)
        np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
        assert (got["codes"] == ref["codes"]).mean() >= 0.999
        # and not the other head's (the tiny heads are close to uniform, hence the relative test)
        wrong = torch_outputs(ModalityScorer(model, heads[other], m), feeds)
        off = float(np.abs(got["probs"] - ref["probs"]).max())
        assert float(np.abs(got["probs"] - wrong["probs"]).max()) > 20 * max(off, 1e-6)


def test_the_fused_threshold_is_recalibrated_for_the_mixed_pair(
    mixed_bundle: Path, tiny_run: Path, split: SplitData
) -> None:
    """By hand: each modality's probabilities from its own head, ratios against the shipped
    heads' own thresholds, the (1 - FAR) 'higher' quantile on normals with both sensors."""
    raw = _manifest(mixed_bundle)
    _, model, heads, log = load_run(tiny_run)
    val, far = split.val, log["target_far"]
    thr = {"current": log["thresholds"]["both"]["current"]}
    thr["camera"] = log["thresholds"]["camera"]["camera"]
    for m in MODALITIES:
        assert raw["thresholds"][m] == pytest.approx(thr[m], rel=1e-6)
    both = np.flatnonzero((val.label == 0) & val.valid_cur & val.valid_cam)
    assert both.size >= 50
    ratio = np.maximum(
        *(
            (1.0 - _probs(ModalityScorer(model, heads[raw["heads"][m]], m), val, both)[:, 0])
            / thr[m]
            for m in MODALITIES
        )
    )
    expected = float(np.quantile(ratio, 1.0 - far, method="higher"))
    assert raw["thresholds"]["fused"] == pytest.approx(expected, rel=1e-5)
    assert raw["thresholds"]["fusion"] == "max_ratio"


def test_a_run_without_camera_labels_falls_back_to_the_zero_shot_head_for_camera(
    tiny_run: Path, easy_data: dict[str, Path], split: SplitData, tmp_path: Path
) -> None:
    """No labelled camera window to train on: no camera or both head (no crash), and the
    camera graph ships the current head zero-shot."""
    cfg, model, _, log = load_run(tiny_run)
    no_camera = replace(
        split, train=replace(split.train, valid_cam=np.zeros(len(split.train), bool))
    )
    heads, figures = fit_heads(model, cfg, no_camera, limit=2000)
    assert set(heads) == {"current"}
    thresholds = {k: calibrate(model, h, split.val, log["target_far"]) for k, h in heads.items()}
    run = tmp_path / "run"
    run.mkdir()
    torch.save(
        {
            "log": {**log, "thresholds": thresholds, "heads_val": figures},
            "cmg": model.state_dict(),
            "heads": {k: h.state_dict() for k, h in heads.items()},
        },
        run / "checkpoint.pt",
    )
    export_bundle(run, tmp_path / "bundle", data_dir=easy_data["train"])
    raw = _manifest(tmp_path / "bundle")
    assert raw["heads"] == {"current": "current", "camera": "current"} and raw["head"] == "current"
    assert raw["head_selection"]["camera"]["rule"] == "zero_shot_fallback"
    assert raw["head_selection"]["camera"]["candidates"] == []
    assert raw["head_selection"]["current"]["rule"] == "best_validation_macro_f1"
    assert raw["thresholds"]["camera"] == pytest.approx(thresholds["current"]["camera"], rel=1e-6)
    assert raw["thresholds"]["fused"] == pytest.approx(thresholds["current"]["fused"], rel=1e-6)
    assert verify_bundle(tmp_path / "bundle").heads == raw["heads"]


def test_export_refuses_an_unknown_head_or_modality(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head 'nope' not in the run"):
        export_bundle(tiny_run, tmp_path / "b", heads={"camera": "nope"})
    with pytest.raises(ValueError, match="per modality"):
        export_bundle(tiny_run, tmp_path / "b", heads={"thermal": "current"})


def test_cli_passes_the_per_modality_heads(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.export
    from furnace.cli import main

    calls: list[dict[str, Any]] = []

    def fake(*_: Any, **kwargs: Any) -> Path:
        calls.append(kwargs)
        return tiny_bundle / "manifest.json"

    monkeypatch.setattr(training.export, "export_bundle", fake)
    argv = ["export", "--run", "r", "--out", "o", "--head", "both", "--head-camera", "camera"]
    argv.append("--no-alert-calibration")  # it would recalibrate the shared tiny_bundle
    assert main(argv) == 0
    assert calls[-1]["head"] == "both" and calls[-1]["heads"] == {"camera": "camera"}
    assert main(["export", "--run", "r", "--out", "o", "--no-alert-calibration"]) == 0
    assert calls[-1]["head"] is None and calls[-1]["heads"] == {}
    assert "head '" in capsys.readouterr().out
