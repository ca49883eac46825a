"""`training.export`: ONNX graphs with normalisation inside, dynamic batch, ORT == torch on
held-out windows, a manifest that records what the service needs (docs/design/serving.md 3.3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model.scorer import ModalityScorer
from training.data.splits import load_recordings, windows_of
from training.export import INPUTS, OUTPUTS, measure_parity, scorer_inputs, torch_outputs
from training.run import load_run

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def held_out(easy_data: dict[str, Path]):  # noqa: ANN201 - training.data.Windows
    recs = load_recordings(easy_data["test"])  # furnaces the run never saw
    return windows_of(recs, window_s=16.0, hop_s=4.0, baseline_s=120.0)


def test_manifest_records_what_the_service_needs(tiny_bundle: Path, tiny_run: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    cfg, _, _, log = load_run(tiny_run)
    assert raw["format"] == "furnace-sentinel-bundle" and raw["format_version"] == 1
    assert raw["window"]["segments"] == cfg.cmg.segments and raw["window"]["frame_px"] == 64
    assert raw["class_names"][0] == "normal" and raw["codebook_size"] == 16
    assert set(raw["heads"]) == {"current", "camera"} and set(raw["head_selection"]) == set(
        raw["heads"]
    )
    names = set(raw["heads"].values())
    mixed = f"current={raw['heads']['current']},camera={raw['heads']['camera']}"
    assert raw["head"] == (names.pop() if len(names) == 1 else mixed)
    assert raw["thresholds"]["target_far"] == log["target_far"]
    for m, head in raw["heads"].items():  # each graph's own head's calibration
        assert raw["thresholds"][m] == pytest.approx(log["thresholds"][head][m], rel=1e-6)
    assert raw["thresholds"]["fusion"] == "max_ratio"
    for m in ("current", "camera"):
        assert sum(raw["code_usage"][m]) == pytest.approx(1.0, abs=1e-4)
        assert [i["name"] for i in raw["graphs"][m]["inputs"]] == list(INPUTS[m])
        assert raw["graphs"][m]["inputs"][0]["shape"][0] is None  # dynamic batch
        assert raw["parity"][m]["code_agreement"] >= 0.999
    assert set(raw["files"]) == {"current.onnx", "camera.onnx", "golden.npz"}
    assert raw["model_version"].startswith("tiny-")


@pytest.mark.parametrize("modality", ["current", "camera"])
def test_ort_matches_torch_on_held_out_windows(
    modality: str, tiny_bundle: Path, tiny_run: Path, held_out
) -> None:
    _, model, heads, _ = load_run(tiny_run)
    shipped = json.loads((tiny_bundle / "manifest.json").read_text())["heads"][modality]
    scorer = ModalityScorer(model, heads[shipped], modality)
    session = ort.InferenceSession(str(tiny_bundle / f"{modality}.onnx"))
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    meta = session.get_modelmeta().custom_metadata_map
    assert (
        meta["model_version"]
        == json.loads((tiny_bundle / "manifest.json").read_text())["model_version"]
    )
    valid = held_out.valid_cur if modality == "current" else held_out.valid_cam
    index = np.flatnonzero(valid)
    assert index.size >= 20
    for B in (1, 2, 7):  # batch is dynamic
        feeds = scorer_inputs(held_out, modality, index[:B])
        got = dict(zip(OUTPUTS, session.run(None, feeds), strict=True))
        ref = torch_outputs(scorer, feeds)
        assert got["codes"].dtype == np.int64 and got["codes"].shape == ref["codes"].shape
        np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-4)
    parity = measure_parity(scorer, session, scorer_inputs(held_out, modality, index))
    assert parity.code_agreement >= 0.999
    assert parity.max_prob_diff <= 1e-4 and parity.max_score_diff <= 1e-4


def test_export_refuses_an_unknown_head(tiny_run: Path, tmp_path: Path) -> None:
    from training.export import export_bundle

    with pytest.raises(ValueError, match="head 'nope' not in the run"):
        export_bundle(tiny_run, tmp_path / "b", head="nope")


def test_a_long_context_run_exports_and_the_service_scores_stream_windows_alike(
    easy_data: dict[str, Path], tmp_path: Path
) -> None:
    """current_context "long": a (B, 6) baseline input end to end, training to service."""
    from dataclasses import replace

    from service.engine import Engine
    from service.windows import WindowAssembler
    from tests.helpers.tiny_run import tiny_config
    from training.export import export_bundle
    from training.run import train_run

    base = tiny_config()
    cfg = replace(
        base,
        cmg=replace(base.cmg, current_context="long"),
        train=replace(
            base.train, steps=20, checkpoint_every=20, head_epochs=2, long_baseline_s=300.0
        ),
    )
    train_run(easy_data["train"], tmp_path / "run", cfg, progress=False)
    export_bundle(tmp_path / "run", tmp_path / "bundle", data_dir=easy_data["train"])
    engine = Engine(tmp_path / "bundle")  # verifies the files and the golden windows
    spec = engine.manifest.window
    assert spec.long_baseline_seconds == 300.0 and spec.baseline_width == 6
    assert engine.manifest.graphs["current"].inputs[1].shape == (None, 6)

    rec = load_recordings(easy_data["test"])[0]
    offline = windows_of([rec], **cfg.train.window_args)
    asm = WindowAssembler("f", spec)
    for t, row in zip(rec.t_cur.tolist(), rec.current.tolist(), strict=True):
        asm.add_current(rec.start_epoch + t, *row)
    online = {round(w.end - rec.start_epoch, 6): w for w in asm.pop_closed()}
    pick = [j for j in range(len(offline)) if offline.t_end[j] > 400.0][:4]
    windows = [online[round(float(offline.t_end[j]), 6)] for j in pick]
    got = engine.score(windows)
    _, model, heads, _ = load_run(tmp_path / "run")
    ref = torch_outputs(
        ModalityScorer(model, heads[engine.manifest.heads["current"]], "current"),
        scorer_inputs(offline, "current", np.asarray(pick)),
    )
    for k, d in enumerate(got):
        assert d.per_modality["current"].codes == ref["codes"][k].tolist()
        np.testing.assert_allclose(d.per_modality["current"].probs, ref["probs"][k], atol=1e-4)
