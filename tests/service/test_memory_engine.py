"""Memory heads in the bundle and the engine (docs/service.md "Memory"): the manifest's
`memory` section is verified like the window graphs, the engine replaces each modality's
probabilities and score with its memory graph's outputs over the furnace's code history, and
offline replays start from an empty history. Real ONNX Runtime on `memory_bundle`."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from furnace.scorecard import score_windows
from service.bundle import BundleError, verify_bundle
from service.detection import Detection
from service.engine import Engine
from service.types import MODALITIES
from tests.helpers.memory import synthetic_windows

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def engine(memory_bundle: Path) -> Engine:
    return Engine(memory_bundle)


def stride_ends(engine: Engine, n: int, start: float = T0) -> list[float]:
    """`n` window ends one memory stride apart: each one's slots are the ones before it."""
    memory = engine.manifest.memory
    assert memory is not None
    step = memory.stride_windows * memory.hop_seconds
    return [start + k * step for k in range(n)]


# --------------------------------------------------------------------- the bundle


def rehash(folder: Path, *names: str) -> None:
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    for name in names:
        raw["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    path.write_text(json.dumps(raw))


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def _missing_file(folder: Path) -> None:
    (folder / "memory_current.onnx").unlink()


def _changed_file(folder: Path) -> None:
    path = folder / "memory_camera.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _unhashed_file(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["files"].pop("memory_current.onnx"))


def _other_slots(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["memory"].update(slots=raw["memory"]["slots"] - 1))


def _zero_slots(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["memory"].update(slots=0))


def _other_hop(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["memory"].update(hop_seconds=1.0))


def _other_width(folder: Path) -> None:
    edit_manifest(
        folder,
        lambda raw: raw["memory"].update(codes_per_window=raw["memory"]["codes_per_window"] + 1),
    )


def _no_camera_graph(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["memory"]["graphs"].pop("camera"))


def _renamed_input(folder: Path) -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["memory"]["graphs"]["current"]["inputs"][1]["name"] = "mask"

    edit_manifest(folder, change)


def _bad_role(folder: Path) -> None:
    edit_manifest(folder, lambda raw: raw["memory"].update(role="vote"))


def _window_graph_reused(folder: Path) -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["memory"]["graphs"]["camera"]["file"] = raw["graphs"]["camera"]["file"]

    edit_manifest(folder, change)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_missing_file, "listed in the manifest but missing"),
        (_changed_file, "does not match the manifest"),
        (_unhashed_file, "have no sha256"),
        (_other_slots, "slots"),
        (_zero_slots, "'slots' must be a positive integer"),
        (_other_hop, "hop_seconds"),
        (_other_width, "codes_per_window"),
        (_no_camera_graph, "graphs.camera"),
        (_renamed_input, "graphs.current.inputs"),
        (_window_graph_reused, "already another graph's file"),
        (_bad_role, "role"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_a_bundle_with_a_broken_memory_section_is_refused(
    memory_bundle: Path, tmp_path: Path, change: Callable[[Path], None], reason: str
) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(memory_bundle, folder)
    verify_bundle(folder)  # the copy is fine
    change(folder)
    with pytest.raises(BundleError) as info:
        verify_bundle(folder)
    assert reason in str(info.value)


def test_the_engine_refuses_memory_graphs_that_disagree_with_the_manifest(
    memory_bundle: Path, tmp_path: Path
) -> None:
    """Slots the graph does not take (manifest and io-spec edited consistently), golden
    histories missing or wrong: refused at load, as the window graphs are."""
    folder = tmp_path / "slots"
    shutil.copytree(memory_bundle, folder)

    def fewer_slots(raw: dict[str, Any]) -> None:
        memory = raw["memory"]
        memory["slots"] -= 1
        for graph in memory["graphs"].values():
            graph["inputs"][0]["shape"][1] -= 1
            graph["inputs"][1]["shape"][1] -= 1

    edit_manifest(folder, fewer_slots)
    verify_bundle(folder)  # consistent on paper
    with pytest.raises(BundleError, match="memory_current.onnx: input codes has shape"):
        Engine(folder)

    folder = tmp_path / "golden"
    shutil.copytree(memory_bundle, folder)
    golden = folder / "golden.npz"
    with np.load(golden) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("memory/camera/")}
    np.savez_compressed(golden, **arrays)  # type: ignore[arg-type]
    rehash(folder, "golden.npz")
    with pytest.raises(BundleError, match="no golden array 'memory/camera/codes'"):
        Engine(folder)

    folder = tmp_path / "swapped"
    shutil.copytree(memory_bundle, folder)
    shutil.copy(folder / "memory_current.onnx", folder / "memory_camera.onnx")
    rehash(folder, "memory_camera.onnx")
    with pytest.raises(BundleError, match="camera memory graph disagrees with its golden"):
        Engine(folder)


def test_the_same_bundle_without_its_memory_section_scores_with_the_window_graphs(
    memory_bundle: Path, engine: Engine, tmp_path: Path
) -> None:
    """No `memory` section: no memory sessions, no history; each modality's probabilities and
    score are the window graph's (what the memory bundle keeps as `window_score`), and no
    record carries `window_score`."""
    folder = tmp_path / "plain"
    shutil.copytree(memory_bundle, folder)
    memory = engine.manifest.memory
    assert memory is not None

    def drop(raw: dict[str, Any]) -> None:
        del raw["memory"]
        for graph in memory.graphs.values():
            del raw["files"][graph.file]
            (folder / graph.file).unlink()

    edit_manifest(folder, drop)
    plain = Engine(folder)
    assert plain.manifest.memory is None and plain.history is None and not plain.has_memory
    windows = synthetic_windows(plain.manifest.window, "f", stride_ends(engine, 4), seed=1)
    dets = plain.score(windows)
    with_memory = engine.score(windows, history=engine.new_history())
    for det, mem in zip(dets, with_memory, strict=True):
        for m, r in det.per_modality.items():
            assert r.window_score is None
            assert r.score == pytest.approx(mem.per_modality[m].window_score, abs=1e-6)
            assert r.codes == mem.per_modality[m].codes
        assert all("window_score" not in r for r in det.to_dict()["per_modality"].values())


def test_role_name_names_with_the_memory_head_and_decides_with_the_window_graph(
    memory_bundle: Path, engine: Engine, tmp_path: Path
) -> None:
    """Role "name": each modality's probabilities are the memory head's (the condition), its
    score the window graph's (whether the window is abnormal), so the thresholds and alert
    policy calibrated for the window heads still hold."""
    folder = tmp_path / "name"
    shutil.copytree(memory_bundle, folder)
    edit_manifest(folder, lambda raw: raw["memory"].update(role="name"))
    naming = Engine(folder)
    assert naming.manifest.memory is not None and naming.manifest.memory.role == "name"
    windows = synthetic_windows(naming.manifest.window, "f", stride_ends(engine, 6), seed=3)
    named = naming.score(windows)
    decided = engine.score(windows, history=engine.new_history())
    assert engine.manifest.memory is not None and engine.manifest.memory.role == "decide"
    for a, b in zip(named, decided, strict=True):
        for m, r in a.per_modality.items():
            other = b.per_modality[m]
            assert r.probs == pytest.approx(other.probs, abs=1e-6)  # the memory head's
            assert r.score == pytest.approx(other.window_score, abs=1e-6)  # the window graph's
            assert r.window_score == pytest.approx(other.window_score, abs=1e-6)


# --------------------------------------------------------------------- scoring


def test_scoring_with_memory_reads_the_furnace_history(engine: Engine) -> None:
    """Each modality's probabilities and score are the memory graph's over slots built from
    the earlier windows of the same furnace; `window_score` is the window graph's own score;
    with history the outputs differ from the window alone (the memory is used)."""
    memory = engine.manifest.memory
    assert memory is not None and engine.history is not None
    spec = engine.manifest.window
    ends = stride_ends(engine, memory.slots + 3)
    windows = synthetic_windows(spec, "f-mem", ends, seed=2)
    dets = [engine.score([w])[0] for w in windows]  # live: one window at a time
    differs = 0
    for k, (w, det) in enumerate(zip(windows, dets, strict=True)):
        alone = engine.score([w], history=engine.new_history())[0]
        for m in MODALITIES:
            r, a = det.per_modality[m], alone.per_modality[m]
            assert r.codes == a.codes and r.window_score == pytest.approx(a.window_score)
            assert r.score == pytest.approx(1.0 - r.probs[0], abs=1e-5)
            # the slots, built here from the detections' own codes
            n = min(k, memory.slots - 1) + 1
            codes = np.zeros((1, memory.slots, memory.codes_per_window), np.int64)
            present = np.zeros((1, memory.slots), np.float32)
            for j in range(n):
                codes[0, j] = dets[k - j].per_modality[m].codes
                present[0, j] = 1.0
            assert r.window_probs is not None and r.window_probs == a.window_probs
            own = np.asarray([r.window_probs], np.float32)
            out = engine.run_memory(m, codes, present, own)
            assert np.allclose(out["probs"][0], r.probs, atol=1e-6), (k, m)
            if k == 0:
                assert np.allclose(r.probs, a.probs, atol=1e-6)
            elif not np.allclose(r.probs, a.probs, atol=1e-4):
                differs += 1
    assert differs >= len(windows)  # most windows of both modalities read their history
    # the window graph's score, as a bundle without memory would decide
    feeds = {
        "current_a": np.stack([windows[0].current.x]),  # type: ignore[union-attr]
        "baseline_a": np.stack([windows[0].current.baseline]),  # type: ignore[union-attr]
    }
    own = float(engine.run("current", feeds)["score"][0])
    assert dets[0].per_modality["current"].window_score == pytest.approx(own, abs=1e-6)


def test_a_batch_scores_as_its_windows_one_by_one(engine: Engine) -> None:
    """Windows of one furnace in one call (the offline replay's batches), in any order, read
    the same history as scored one at a time in window order."""
    spec = engine.manifest.window
    memory = engine.manifest.memory
    assert memory is not None
    ends = [T0 + k * spec.hop_seconds for k in range(3 * memory.stride_windows * 2)]
    windows = synthetic_windows(spec, "f-batch", ends, seed=3)
    history = engine.new_history()
    one_by_one = [engine.score([w], history=history)[0] for w in windows]
    batched = engine.score(windows[::-1], history=engine.new_history())[::-1]
    for a, b in zip(one_by_one, batched, strict=True):
        for m in MODALITIES:
            assert np.allclose(a.per_modality[m].probs, b.per_modality[m].probs, atol=1e-6)


def test_a_detection_with_window_scores_round_trips(engine: Engine) -> None:
    spec = engine.manifest.window
    det = engine.score(synthetic_windows(spec, "f-rt", [T0], seed=4))[0]
    data = json.loads(json.dumps(det.to_dict()))
    for m in MODALITIES:
        assert data["per_modality"][m]["window_score"] == det.per_modality[m].window_score
    back = Detection.from_dict(data)
    assert back.per_modality == det.per_modality
    for r in data["per_modality"].values():  # a record written before memory heads
        del r["window_score"]
    assert all(r.window_score is None for r in Detection.from_dict(data).per_modality.values())


def test_offline_replays_start_from_an_empty_history(engine: Engine) -> None:
    """`furnace.scorecard.score_windows` (the scorecard and the alert calibration) replays each
    furnace and setting with its own history: a second replay of the same furnace id and
    window ends reads nothing of the first, and the engine's own history is not touched."""
    spec = engine.manifest.window
    memory = engine.manifest.memory
    assert memory is not None and engine.history is not None
    engine.reset_memory()
    ends = [T0 + k * spec.hop_seconds for k in range(4 * memory.stride_windows)]
    first = synthetic_windows(spec, "site", ends, seed=5)
    second = synthetic_windows(spec, "site", ends, seed=6)
    list(score_windows(engine, iter([first]), batch=16))
    replayed = list(score_windows(engine, iter([[w] for w in second]), batch=16))
    fresh = engine.score(second, history=engine.new_history())
    shared = engine.new_history()
    engine.score(first, history=shared)
    contaminated = engine.score(second, history=shared)
    assert engine.history.furnaces() == 0
    leaks = 0
    for a, b, c in zip(replayed, fresh, contaminated, strict=True):
        for m in MODALITIES:
            assert np.allclose(a.per_modality[m].probs, b.per_modality[m].probs, atol=1e-6)
            leaks += not np.allclose(c.per_modality[m].probs, b.per_modality[m].probs, atol=1e-4)
    assert leaks > 0  # a shared history would have read the first replay
    engine.score(first)
    assert engine.history.furnaces() == 1
    engine.reset_memory()
    assert engine.history.furnaces() == 0 and not engine.history.primed("site")
