"""`furnace memory`: add memory heads (model/memory.py) to an exported bundle [ours].

The bundle's own graphs encode the run's training data (the split its manifest records), one
memory head per label source is trained on those codes (training/memory.py), each modality
gets the best on its validation windows, and the bundle is rewritten with one more graph per
modality (`memory_current.onnx`, `memory_camera.onnx`: codes (B, M, K) int64 + present (B, M)
-> probs, score), golden histories, the `memory` manifest section and thresholds calibrated
again on the memory scores. The alert policy of the old thresholds no longer holds, so it is
dropped: run `furnace calibrate-alerts` next (`make model` does). docs/export.md, "Memory".
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from onnx import numpy_helper
from tqdm.auto import tqdm

from model.memory import MemoryHead, MemoryScorer
from training.config import config_from_dict
from training.data import MODALITIES, Windows, valid_for
from training.data.splits import load_recordings
from training.decision import calibrate_probs, source_modalities
from training.export.bundle import write_manifest
from training.export.exporter import _io_spec, export_batched, scorer_inputs, session_for
from training.export.signing import load_signing_key
from training.memory import (
    History,
    MemoryConfig,
    build_history,
    concat,
    full_probs,
    predict,
    select_memory_heads,
    train_memory_head,
)
from training.run import split_for, subsample

logger = logging.getLogger(__name__)

MEMORY_INPUTS = ("codes", "present", "window_probs")
MEMORY_ROLES = ("decide", "name")  # as service/bundle.py
MEMORY_OUTPUTS = ("probs", "score")
GOLDEN_HISTORIES = 8  # per modality
PARITY_HISTORIES = 2000


def graph_file(modality: str) -> str:
    return f"memory_{modality}.onnx"


def bundle_codes(
    folder: Path, w: Windows, n_classes: int, *, progress: bool = True
) -> dict[str, tuple[NDArray[np.int64], NDArray[np.float32]]]:
    """Per modality, (W, K) codes and (W, C) window-head probabilities of every valid window
    from the bundle's own graph (zeros where not valid)."""
    out = {}
    for m in MODALITIES:
        session = session_for(folder / f"{m}.onnx")
        idx = np.flatnonzero(valid_for(w, m))
        k = int(session.get_outputs()[0].shape[1])
        codes = np.zeros((len(w), k), np.int64)
        probs = np.zeros((len(w), n_classes), np.float32)
        for s in tqdm(range(0, idx.size, 512), desc=f"{m} codes", disable=not progress):
            b = idx[s : s + 512]
            codes[b], probs[b] = session.run(["codes", "probs"], scorer_inputs(w, m, b))
        out[m] = (codes, probs)
    return out


def graph_codebook(folder: Path, w: Windows, shape: tuple[int, int]) -> NDArray[np.float32]:
    """The shared codebook, read from the current graph and checked against its outputs:
    the graph's `quantized` must be the codebook rows of its `codes`."""
    proto = onnx.load(str(folder / "current.onnx"))
    found = [
        numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if tuple(t.dims) == shape and t.data_type == onnx.TensorProto.FLOAT
    ]
    idx = np.flatnonzero(valid_for(w, "current"))[:64]
    session = session_for(folder / "current.onnx")
    codes, quantized = session.run(["codes", "quantized"], scorer_inputs(w, "current", idx))
    for book in found:
        if np.allclose(book[codes].reshape(quantized.shape), quantized, atol=1e-6):
            return book.astype(np.float32)
    msg = f"{folder / 'current.onnx'}: no {shape} initializer reproduces the graph's code vectors"
    raise ValueError(msg)


def export_memory_graph(head: MemoryHead, example: History, path: Path) -> None:
    """Write one memory graph with a dynamic batch axis (example batch >= 2)."""
    feeds = dict(zip(MEMORY_INPUTS, _arrays(example), strict=True))
    export_batched(MemoryScorer(head), feeds, list(MEMORY_INPUTS), list(MEMORY_OUTPUTS), path)


def _arrays(h: History) -> tuple[NDArray[Any], ...]:
    """A history's memory-graph inputs, in MEMORY_INPUTS order."""
    return (h.codes, h.present, h.window_probs)


def memory_parity(head: MemoryHead, session: ort.InferenceSession, h: History) -> dict[str, float]:
    ref = predict(head, h)
    feeds = (
        {n: a[s : s + 512] for n, a in zip(MEMORY_INPUTS, _arrays(h), strict=True)}
        for s in range(0, len(h.label), 512)
    )
    got = np.concatenate([session.run(["probs"], f)[0] for f in feeds])
    return {"histories": float(len(h.label)), "max_prob_diff": float(np.abs(got - ref).max())}


def _pick(h: History, index: NDArray[np.int64]) -> History:
    return History(*(getattr(h, f)[index] for f in History._fields))


def add_memory(
    bundle: str | Path,
    data_dir: str | Path,
    *,
    out: str | Path | None = None,
    cfg: MemoryConfig | None = None,
    signing_key: str | Path | None = None,
    progress: bool = True,
    threads: int | None = 1,
    role: str = "name",
) -> dict[str, Any]:
    """Train memory heads for `bundle` on `data_dir` (the run's training data) and write the
    bundle with them (in place, or a copy at `out`).

    `role` "name" (the default): the memory heads' probabilities replace the window heads'
    probabilities only (which condition), the window heads' scores still decide whether a
    window is abnormal, so thresholds and alert policy stay; "decide": their probabilities
    and scores replace the window heads' in the service, so the thresholds are calibrated
    again on them and the alert policy is dropped (docs/results.md: measured, not shipped).

    `threads` sets torch's thread count (1, the default, reproduces a bundle exactly; None
    leaves it).

    Returns:
        The manifest's `memory` section.

    Raises:
        FileNotFoundError: no bundle or no data.
        ValueError: a bundle without a training record or with memory heads already, or
            data without labelled windows.
    """
    t0 = time.perf_counter()
    cfg = cfg or MemoryConfig()
    if role not in MEMORY_ROLES:
        msg = f"role must be one of {MEMORY_ROLES}, got {role!r}"
        raise ValueError(msg)
    if threads:
        torch.set_num_threads(threads)
    key = load_signing_key(signing_key) if signing_key is not None else None
    src = Path(bundle)
    manifest = json.loads((src / "manifest.json").read_text())
    if "training" not in manifest or "config" not in manifest["training"]:
        msg = f"{src}: the manifest has no training record; export the bundle with furnace export"
        raise ValueError(msg)
    if manifest.get("memory") is not None:
        msg = f"{src} already has memory heads: start from the bundle without them (furnace "
        msg += "export, then furnace calibrate-alerts, as make model does)"
        raise ValueError(msg)
    folder = Path(out) if out is not None else src
    if folder != src:
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(src, folder)
    run_cfg = config_from_dict(manifest["training"]["config"])
    hop = float(manifest["window"]["hop_seconds"])
    segments = int(manifest["window"]["segments"])
    n_classes = len(manifest["class_names"])
    data = split_for(run_cfg, load_recordings(data_dir))
    codebook = graph_codebook(
        folder, data.val, (int(manifest["codebook_size"]), int(manifest["code_dim"]))
    )
    hist: dict[str, dict[str, History]] = {"train": {}, "val": {}}
    for split, w in (("train", data.train), ("val", data.val)):
        encoded = bundle_codes(folder, w, n_classes, progress=progress)
        for m in MODALITIES:
            codes, own = encoded[m]
            hist[split][m] = build_history(w, codes, own, m, hop_s=hop, cfg=cfg)
    heads, figures = {}, {}
    for source in ("current", "camera", "both"):
        mods = source_modalities(source)
        if any(len(hist[s][m].label) == 0 for s in hist for m in mods):
            logger.warning("no %r memory head: no valid %s windows in a split", source, mods)
            continue
        heads[source], figures[source] = train_memory_head(
            concat([hist["train"][m] for m in mods]),
            concat([hist["val"][m] for m in mods]),
            codebook,
            segments=segments,
            n_classes=n_classes,
            cfg=cfg,
            progress=progress,
            desc=f"memory head ({source} labels)",
        )
    if not heads:
        msg = f"{data_dir}: no valid windows to train a memory head on"
        raise ValueError(msg)
    chosen, report = select_memory_heads(heads, hist["val"])

    golden = dict(np.load(folder / manifest["golden"]))
    graphs, parity = {}, {}
    for m in MODALITIES:
        head, h = heads[chosen[m]], hist["val"][m]
        path = folder / graph_file(m)
        example = _pick(h, subsample(np.ones(len(h.label), bool), GOLDEN_HISTORIES, 5))
        export_memory_graph(head, example, path)
        session = session_for(path)
        parity[m] = memory_parity(
            head, session, _pick(h, subsample(np.ones(len(h.label), bool), PARITY_HISTORIES, 6))
        )
        golden |= {
            f"memory/{m}/codes": example.codes,
            f"memory/{m}/present": example.present,
            f"memory/{m}/window_probs": example.window_probs,
            f"memory/{m}/probs": predict(head, example).astype(np.float32),
        }
        graphs[m] = {
            "file": path.name,
            "inputs": _io_spec(session.get_inputs()),
            "outputs": _io_spec(session.get_outputs()),
        }
        logger.info("%s memory graph: head %r, parity %s", m, chosen[m], parity[m])
    np.savez_compressed(folder / manifest["golden"], **golden)

    memory = {
        "role": role,
        "slots": cfg.slots,
        "stride_windows": cfg.stride_windows,
        "hop_seconds": hop,
        "codes_per_window": int(hist["val"]["current"].codes.shape[2]),
        "heads": chosen,
        "head_selection": report,
        "graphs": graphs,
        "parity": parity,
        "validation": figures,
        "training": {
            **asdict(cfg),
            "data": str(Path(data_dir).resolve()),
            "histories": {m: len(hist["train"][m].label) for m in MODALITIES},
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    if role == "decide":
        probs = {
            m: (
                full_probs(heads[chosen[m]], hist["val"][m], len(data.val), n_classes),
                valid_for(data.val, m),
                None,
            )
            for m in MODALITIES
        }
        target_far = float(manifest["thresholds"].get("target_far", run_cfg.train.target_far))
        cal = calibrate_probs(probs, data.val.label, target_far)
        stale = ("alert_policy", "thresholds_per_window", "adaptation")
        new = {k: v for k, v in manifest.items() if k not in stale}
        new["window_thresholds"] = manifest["thresholds"]
        new["thresholds"] = {
            **{k: float(cal[k]) for k in ("current", "camera", "fused")},
            "fusion": "max_ratio",
            "target_far": target_far,
        }
    else:  # the window heads' scores still decide: thresholds and alert policy hold
        new = dict(manifest)
    new["memory"] = memory
    new["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    window_graphs = [manifest["graphs"][m]["file"] for m in MODALITIES]
    write_manifest(
        folder, new, graphs=[*window_graphs, *(graph_file(m) for m in MODALITIES)], signing_key=key
    )
    if role == "decide" and "alert_policy" in manifest:
        logger.warning(
            "%s: the alert policy was calibrated for the window heads and is dropped; "
            "run furnace calibrate-alerts on this bundle",
            folder,
        )
    logger.info("memory heads added to %s in %.0f s", folder, time.perf_counter() - t0)
    return memory
