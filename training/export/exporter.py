"""`furnace export`: a trained run -> a verified model bundle the service loads
(docs/design/architecture.md "Model bundle", docs/design/serving.md 3.3).

One ONNX graph per modality wraps `model.scorer.ModalityScorer`: raw window in (current in
amperes with its per-phase baseline, or uint8 64x64 RGB frames), normalisation inside the
graph, out come the code per segment, the code vectors, per-condition probabilities, the
anomaly score and per-segment scores. The bundle also holds `golden.npz` (inputs and the torch
outputs for a few held-out windows, so the service can check a new session before it swaps)
and `manifest.json` (training/export/bundle.py).

We export with the `torch.export`-based exporter (`dynamo=True`, `dynamic_shapes` with a
batch Dim, example batch >= 2), as docs/design/serving.md 3.3 recommends; docs/export.md has the
measured comparison with the TorchScript exporter.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch.export import Dim

from model.scorer import ModalityScorer
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import load_recordings
from training.decision import head_label, shipped_heads
from training.export.bundle import BUNDLE_FORMAT, FORMAT_VERSION, write_manifest
from training.export.signing import load_signing_key
from training.run import load_run, split_for, subsample

logger = logging.getLogger(__name__)

OUTPUTS = ("codes", "quantized", "probs", "score", "segment_scores")
INPUTS = {"current": ("current_a", "baseline_a"), "camera": ("frames",)}
GOLDEN_WINDOWS = 8  # per modality, from the validation split
REFERENCE_WINDOWS = 8000  # normal training windows for the site-calibration reference
USAGE_WINDOWS = 4000  # per modality, training windows for the code-usage histogram


class Parity(NamedTuple):
    """ONNX Runtime vs torch on the same windows (docs/design/serving.md 3.3)."""

    windows: int
    code_agreement: float  # fraction of (window, segment) codes equal
    max_prob_diff: float
    max_score_diff: float


def scorer_inputs(w: Windows, modality: str, index: NDArray[np.int64]) -> dict[str, NDArray[Any]]:
    """The graph feeds of windows `index`, named as in the bundle."""
    if modality == "current":
        return {"current_a": w.x_c[index], "baseline_a": w.baseline[index]}
    return {"frames": w.camera(index)}


def export_onnx(scorer: ModalityScorer, example: dict[str, NDArray[Any]], path: Path) -> None:
    """Write one modality's graph with a dynamic batch axis (example batch must be >= 2)."""
    export_batched(scorer, example, list(INPUTS[scorer.modality]), list(OUTPUTS), path)


def export_batched(
    module: torch.nn.Module,
    example: dict[str, NDArray[Any]],
    inputs: list[str],
    outputs: list[str],
    path: Path,
) -> None:
    """Write `module`'s graph (inputs `example[name]` in the order `inputs`) with a dynamic
    batch axis on every input; the example batch must be >= 2 so that it stays dynamic."""
    if next(iter(example.values())).shape[0] < 2:
        msg = "export with an example batch of at least 2 so batch stays dynamic"
        raise ValueError(msg)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in inputs)
    batch = Dim("batch")
    # "torchvision is not installed. Skipping torchvision::nms" and friends: irrelevant here
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # exporter progress and deprecation notices
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=tuple({0: batch} for _ in inputs),
            dynamo=True,
            external_data=False,
        )


@torch.no_grad()
def torch_outputs(
    scorer: ModalityScorer, feeds: dict[str, NDArray[Any]]
) -> dict[str, NDArray[Any]]:
    args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in INPUTS[scorer.modality]]
    out = scorer(*args)
    return {name: t.numpy() for name, t in zip(OUTPUTS, out, strict=True)}


def session_for(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure_parity(
    scorer: ModalityScorer,
    session: ort.InferenceSession,
    feeds: dict[str, NDArray[Any]],
    *,
    batch: int = 64,
) -> Parity:
    """Compare ORT with torch on every window of `feeds`, in batches."""
    n = next(iter(feeds.values())).shape[0]
    same = total = 0
    dp = ds = 0.0
    for s in range(0, n, batch):
        part = {k: v[s : s + batch] for k, v in feeds.items()}
        ref = torch_outputs(scorer, part)
        got = dict(zip(OUTPUTS, session.run(list(OUTPUTS), part), strict=True))
        same += int((got["codes"] == ref["codes"]).sum())
        total += ref["codes"].size
        dp = max(dp, float(np.abs(got["probs"] - ref["probs"]).max()))
        ds = max(ds, float(np.abs(got["score"] - ref["score"]).max()))
    return Parity(n, same / max(total, 1), dp, ds)


def code_usage(scorer: ModalityScorer, w: Windows, index: NDArray[np.int64]) -> list[float]:
    """Fraction of segments on each code over windows `index` (drift reference)."""
    K = int(scorer.codebook.shape[0])
    counts = np.zeros(K, np.int64)
    for s in range(0, index.size, 512):
        codes = torch_outputs(scorer, scorer_inputs(w, scorer.modality, index[s : s + 512]))
        counts += np.bincount(codes["codes"].ravel(), minlength=K)
    return (counts / max(int(counts.sum()), 1)).round(6).tolist()


def _golden_index(w: Windows, modality: str, n: int) -> NDArray[np.int64]:
    """Held-out windows for the golden file: normal and abnormal ones when both exist."""
    valid = valid_for(w, modality)
    normal = subsample(valid & (w.label == 0), n // 2, 0)
    abnormal = subsample(valid & (w.label > 0), n - normal.size, 1)
    return np.sort(np.concatenate([normal, abnormal]))


def current_reference(graph: Path, w: Windows, limit: int = REFERENCE_WINDOWS) -> dict[str, Any]:
    """`current_feature_reference` (training/export/site.py): the current graph's features
    on normal training windows, per recording, for a later site calibration."""
    from training.export.site import FeatureProbe, feature_reference

    idx = subsample(valid_for(w, "current") & (w.label == 0), limit, 4)
    if not idx.size:
        msg = "no normal training windows with a valid current: cannot write the reference"
        raise ValueError(msg)
    feeds = scorer_inputs(w, "current", idx)
    feats = FeatureProbe(graph).features(feeds["current_a"], feeds["baseline_a"])
    return {**feature_reference(feats, w.recording[idx]), "source": "normal training windows"}


def export_bundle(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    head: str | None = None,
    heads: dict[str, str] | None = None,
    metrics_path: str | Path | None = None,
    name: str | None = None,
    signing_key: str | Path | None = None,
) -> Path:
    """Export a run into a bundle folder and verify ORT against torch on held-out windows.

    Each modality's graph carries its own head (`training.decision.shipped_heads`): by
    default the one, among the heads trained with that modality's labels (`m` or `both`),
    whose service decision is best on the run's validation furnaces; a zero-shot head only
    when the run has none (docs/export.md "Heads"). The fused threshold is calibrated again
    for the pair (`training.decision.calibrate_mixed`).

    Args:
        run_dir: the run (`furnace train --out`).
        out_dir: the bundle folder to write (created; existing bundle files are replaced).
        data_dir: the training data, for the head selection and calibration, the code-usage
            histogram and the held-out golden windows (validation furnaces); default: the
            path the run recorded.
        head: one head (`current`, `camera`, `both`) for both graphs, instead of the rule.
        heads: modality -> head name for the given modalities (overrides `head`); the
            others follow the rule.
        metrics_path: an evaluation's metrics.json to record in the manifest.
        name: the bundle name (default: the folder name) that prefixes the model version.
        signing_key: an Ed25519 private key (PEM, `furnace keygen`) to sign the manifest
            with (`signature.json`); None writes an unsigned bundle, which the service serves
            only with FURNACE_ALLOW_UNSIGNED_BUNDLES=true.

    Returns:
        The manifest path.

    Raises:
        ValueError: a head or modality the run does not have.
        FileNotFoundError: no run or no training data.
    """
    t0 = time.perf_counter()
    key = load_signing_key(signing_key) if signing_key is not None else None  # fail early
    cfg, model, run_heads, log = load_run(run_dir)
    fixed = dict.fromkeys(MODALITIES, head) if head is not None else {}
    fixed |= heads or {}
    for m, h in fixed.items():
        if m not in MODALITIES:
            msg = f"heads are chosen per modality {MODALITIES}, got {m!r}"
            raise ValueError(msg)
        if h not in run_heads:
            msg = f"head {h!r} not in the run (has {sorted(run_heads)})"
            raise ValueError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.onnx"):
        stale.unlink()
    data_path = Path(data_dir) if data_dir is not None else Path(log["data"]["path"])
    if not (data_path / "dataset.json").exists() and not any(data_path.glob("*")):
        msg = f"training data {data_path} not found: pass --data DIR (the run's training data)"
        raise FileNotFoundError(msg)
    data = split_for(cfg, load_recordings(data_path))

    selection, cal = shipped_heads(
        model, run_heads, log["thresholds"], data.val, log["target_far"], fixed=fixed
    )
    chosen = selection.heads
    for m in MODALITIES:
        logger.info("%s graph: head %r (%s)", m, chosen[m], selection.report[m]["rule"])
    scorers = {m: ModalityScorer(model, run_heads[chosen[m]], m) for m in MODALITIES}
    golden: dict[str, NDArray[Any]] = {}
    graphs: dict[str, Any] = {}
    usage: dict[str, list[float]] = {}
    parity: dict[str, dict[str, float]] = {}
    for m, scorer in scorers.items():
        gidx = _golden_index(data.val, m, GOLDEN_WINDOWS)
        feeds = scorer_inputs(data.val, m, gidx)
        path = out / f"{m}.onnx"
        export_onnx(scorer, feeds, path)
        session = session_for(path)
        ref = torch_outputs(scorer, feeds)
        golden.update({f"{m}/{k}": v for k, v in {**feeds, **ref}.items()})
        check_idx = subsample(valid_for(data.val, m), 2000, 2)
        parity[m] = measure_parity(scorer, session, scorer_inputs(data.val, m, check_idx))._asdict()
        usage_idx = subsample(valid_for(data.train, m), USAGE_WINDOWS, 3)
        usage[m] = code_usage(scorer, data.train, usage_idx)
        graphs[m] = {
            "file": path.name,
            "inputs": _io_spec(session.get_inputs()),
            "outputs": _io_spec(session.get_outputs()),
        }
        logger.info("%s graph: parity %s", m, parity[m])
    np.savez_compressed(out / "golden.npz", **golden)  # type: ignore[arg-type]
    reference = current_reference(out / "current.onnx", data.train)

    metrics = json.loads(Path(metrics_path).read_text()) if metrics_path is not None else None
    tc = cfg.train
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "window": {
            "window_seconds": tc.window_s,
            "segments": cfg.cmg.segments,
            "hop_seconds": tc.hop_s,
            "rate_hz": 2.0,
            "baseline_seconds": tc.baseline_s,
            "long_baseline_seconds": tc.long_baseline_s,
            "frame_px": cfg.cmg.frame_px,
            "camera_fps": 2.0,
        },
        "class_names": log["class_names"],
        "codebook_size": int(scorers["current"].codebook.shape[0]),
        "codes_per_segment": int(cfg.cmg.code_groups),  # codes per window = segments x this
        "code_dim": int(scorers["current"].codebook.shape[1]),
        "head": head_label(chosen),
        "heads": chosen,
        "head_selection": selection.report,
        "graphs": graphs,
        "golden": "golden.npz",
        "thresholds": _thresholds(cal, log["target_far"]),
        "code_usage": usage,
        "current_feature_reference": reference,
        "parity": parity,
        "metrics": metrics,
        "training": {
            "data": log["data"],
            "windows": log["windows"],
            "selected_step": log["selected_step"],
            "config": log["config"],
            "seconds": log["total_seconds"],
        },
    }
    path = write_manifest(
        out, manifest, graphs=[g["file"] for g in graphs.values()], signing_key=key
    )
    logger.info("bundle %s written in %.0f s", out, time.perf_counter() - t0)
    return path


def _thresholds(cal: dict[str, float], target_far: float) -> dict[str, Any]:
    """The manifest's thresholds; `fusion` names the rule `fused` belongs to (service.engine).

    Runs calibrated since the max-ratio rule carry `fused_average` beside `fused`.
    """
    fusion = "max_ratio" if "fused_average" in cal else "average"
    keep = {k: float(cal[k]) for k in ("current", "camera", "fused")}
    return {**keep, "fusion": fusion, "target_far": target_far}


def _io_spec(args: list[Any]) -> list[dict[str, Any]]:
    """Name, element type and shape (None for the dynamic batch) of graph inputs/outputs."""
    return [
        {
            "name": a.name,
            "type": a.type,
            "shape": [d if isinstance(d, int) else None for d in a.shape],
        }
        for a in args
    ]
