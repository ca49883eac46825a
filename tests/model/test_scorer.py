"""Per-modality scorer: consistency with CMG + head, and ONNX export parity (docs/design/cmg.md
4)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.cmg import CMG, build_cmg
from model.config import CMGConfig
from model.heads import DetectorHead, anomaly_score
from model.scorer import ModalityScorer
from tests.model.factories import Batch, make_batch, make_tiny_cfg

OUTPUTS = ["codes", "quantized", "probs", "score", "segment_scores"]


def _trained(cfg: CMGConfig) -> tuple[CMG, DetectorHead]:
    torch.manual_seed(0)
    model = build_cmg(cfg).train()
    for seed in range(2):
        model(*make_batch(cfg, seed=seed))  # data init, statistics, a few EMA steps
    return model.eval(), DetectorHead.from_config(cfg).eval()


def _inputs(modality: str, batch: Batch) -> tuple[torch.Tensor, ...]:
    return (batch.x_c, batch.baseline) if modality == "current" else (batch.x_v,)


@pytest.mark.parametrize("modality", ["current", "camera"])
def test_scorer_matches_cmg_quantize_and_head(modality: str, batch: Batch) -> None:
    cfg = make_tiny_cfg()
    model, head = _trained(cfg)
    scorer = ModalityScorer(model, head, modality)
    out = scorer(*_inputs(modality, batch))
    z = model.encode(modality, *_inputs(modality, batch))
    quant = model.quantize(modality, z)
    assert out.codes.dtype == torch.int64
    assert torch.equal(out.codes, quant.codes)
    torch.testing.assert_close(out.quantized, quant.vectors)
    ref = head(quant.vectors)
    torch.testing.assert_close(out.probs, ref.logits.softmax(-1))
    torch.testing.assert_close(out.score, anomaly_score(out.probs))
    torch.testing.assert_close(out.segment_scores, ref.segment_scores)
    assert out.score.shape == (batch.x_c.shape[0],)


def test_scorer_is_a_frozen_snapshot(batch: Batch) -> None:
    cfg = make_tiny_cfg()
    model, head = _trained(cfg)
    model.train()
    scorer = ModalityScorer(model, head, "camera")
    assert model.training and model.phi_v.training  # building it changed nothing
    scorer.train()
    assert not scorer.training and not any(m.training for m in scorer.modules())
    assert not any(p.requires_grad for p in scorer.parameters())
    first = scorer(batch.x_v)
    assert torch.equal(first.probs, scorer(batch.x_v).probs)  # no dropout
    assert torch.equal(scorer.codebook, model.codebook_for("camera"))
    current = ModalityScorer(model, head, "current")
    assert scorer.codebook.numpy().tobytes() == current.codebook.numpy().tobytes()


def test_scorer_is_finite_on_zero_windows_and_keeps_inputs() -> None:
    cfg = make_tiny_cfg()
    model, head = _trained(cfg)
    x_c, baseline = torch.zeros(2, cfg.segments, 4, 3), torch.zeros(2, 3)
    x_v = torch.zeros(2, cfg.segments, cfg.frame_px, cfg.frame_px, 3, dtype=torch.uint8)
    for modality, args in (("current", (x_c, baseline)), ("camera", (x_v,))):
        out = ModalityScorer(model, head, modality)(*args)
        assert all(bool(torch.isfinite(t.float()).all()) for t in out)
    assert not bool(x_c.any()) and not bool(baseline.any()) and not bool(x_v.any())


@pytest.mark.parametrize("modality", ["current", "camera"])
def test_onnx_export_matches_torch(modality: str, tmp_path: Path) -> None:
    cfg = make_tiny_cfg()
    model, head = _trained(cfg)
    scorer = ModalityScorer(model, head, modality)
    names = ["x_c", "baseline"] if modality == "current" else ["x_v"]
    path = tmp_path / f"{modality}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation notices
        torch.onnx.export(
            scorer,
            _inputs(modality, make_batch(cfg, B=2)),
            str(path),
            input_names=names,
            output_names=OUTPUTS,
            dynamic_axes={n: {0: "batch"} for n in names + OUTPUTS},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    assert [o.name for o in session.get_outputs()] == OUTPUTS
    assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # dynamic batch
    for B in (1, 2, 7):
        args = _inputs(modality, make_batch(cfg, B=B, seed=10 + B))
        with torch.no_grad():
            ref = scorer(*args)
        feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        got = dict(zip(OUTPUTS, session.run(None, feeds), strict=True))
        assert got["codes"].dtype == np.int64
        np.testing.assert_array_equal(got["codes"], ref.codes.numpy())
        np.testing.assert_allclose(got["probs"], ref.probs.numpy(), atol=1e-4)
        np.testing.assert_allclose(got["score"], ref.score.numpy(), atol=1e-4)
        np.testing.assert_allclose(got["quantized"], ref.quantized.numpy(), atol=1e-6)
        np.testing.assert_allclose(got["segment_scores"], ref.segment_scores.numpy(), atol=1e-4)
