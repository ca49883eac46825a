"""Memory heads: history construction, the head's masking, and `furnace memory`'s bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.memory import MemoryHead
from training.memory import ABSENT, History, MemoryConfig, history_index, train_memory_head


def test_history_index_matches_the_hop_grid_within_a_recording() -> None:
    # two recordings; in "a" the window at 6 s is invalid and the one at 10 s is missing
    recording = np.array(["a", "a", "a", "a", "a", "b", "b"])
    t_end = np.array([2.0, 4.0, 6.0, 8.0, 12.0, 2.0, 4.0])
    valid = np.array([True, True, False, True, True, True, True])
    idx = history_index(recording, t_end, valid, hop_s=2.0, slots=4, stride=1)
    assert idx[4].tolist() == [4, ABSENT, 3, ABSENT]  # 12 s: 10 s missing, 8 s, 6 s invalid
    assert idx[3].tolist() == [3, ABSENT, 1, 0]  # 8 s: 6 s invalid, 4 s, 2 s
    assert idx[2, 0] == ABSENT  # an invalid window has no slot 0
    assert idx[6].tolist() == [6, 5, ABSENT, ABSENT]  # "b" never reads "a"
    strided = history_index(recording, t_end, valid, hop_s=2.0, slots=3, stride=2)
    assert strided[4].tolist() == [4, 3, 1]  # 12, 8, 4 s


def _head(slots: int = 4) -> MemoryHead:
    torch.manual_seed(0)
    return MemoryHead(torch.randn(8, 2), segments=2, codes_per_window=4, slots=slots, n_classes=3)


def test_absent_slots_do_not_change_the_output() -> None:
    head = _head().eval()
    codes = torch.randint(0, 8, (5, 4, 4))
    present = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 5)
    other = codes.clone()
    other[:, 2:] = torch.randint(0, 8, (5, 2, 4))
    own = torch.softmax(torch.randn(5, 3), -1)
    torch.nn.init.normal_(head.out[2].weight)  # a trained correction (it starts at zero)
    with torch.no_grad():
        assert torch.allclose(head(codes, present, own), head(other, present, own), atol=1e-6)
        more = torch.ones(5, 4)
        assert not torch.allclose(head(codes, present, own), head(codes, more, own), atol=1e-4)


def test_an_untrained_head_decides_as_the_window_head() -> None:
    head = _head().eval()
    own = torch.softmax(torch.randn(5, 3), -1)
    codes, present = torch.randint(0, 8, (5, 4, 4)), torch.ones(5, 4)
    with torch.no_grad():
        assert torch.allclose(head(codes, present, own).softmax(-1), own, atol=1e-6)


def test_head_rejects_codes_that_do_not_split_into_segments() -> None:
    with pytest.raises(ValueError, match="codes per window"):
        MemoryHead(torch.randn(8, 2), segments=3, codes_per_window=4, slots=2)


def test_training_learns_a_condition_that_only_history_shows() -> None:
    """Class 1 = an earlier window held code 7; the decided window alone looks normal."""
    rng = np.random.default_rng(0)
    n, slots = 1200, 4
    codes = rng.integers(0, 6, (n, slots, 4))
    label = rng.integers(0, 2, n)
    codes[label == 1, 2, :] = 7
    present = np.ones((n, slots), np.float32)
    own = np.full((n, 2), 0.5, np.float32)  # the window head cannot tell
    h = History(codes.astype(np.int64), present, own, label.astype(np.int64), np.arange(n))
    train, val = (
        History(*(getattr(h, f)[s] for f in History._fields))
        for s in (slice(0, 900), slice(900, None))
    )
    cfg = MemoryConfig(
        slots=slots, stride_windows=1, epochs=8, batch=32, hidden=16, slot_dropout=0.0
    )
    book = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    _, fig = train_memory_head(train, val, book, segments=2, n_classes=2, cfg=cfg, progress=False)
    assert fig["macro_f1"] > 0.95


def test_memory_bundle_records_and_runs_its_memory_graphs(tiny_memory_bundle: Path) -> None:
    manifest = json.loads((tiny_memory_bundle / "manifest.json").read_text())
    memory = manifest["memory"]
    assert "alert_policy" not in manifest or manifest["alert_policy"]  # dropped or recalibrated
    assert manifest["window_thresholds"] != manifest["thresholds"]
    golden = np.load(tiny_memory_bundle / manifest["golden"])
    for m in ("current", "camera"):
        spec = memory["graphs"][m]
        assert spec["file"] in manifest["files"]
        assert memory["parity"][m]["max_prob_diff"] < 1e-4
        session = ort.InferenceSession(str(tiny_memory_bundle / spec["file"]))
        names = ["codes", "present", "window_probs"]
        assert [i.name for i in session.get_inputs()] == names
        feeds = {n: golden[f"memory/{m}/{n}"] for n in names}
        assert feeds["codes"].shape[1:] == (memory["slots"], memory["codes_per_window"])
        probs, score = session.run(["probs", "score"], feeds)
        np.testing.assert_allclose(probs, golden[f"memory/{m}/probs"], atol=1e-5)
        np.testing.assert_allclose(score, 1.0 - probs[:, 0], atol=1e-6)
        meta = session.get_modelmeta().custom_metadata_map
        assert meta["model_version"] == manifest["model_version"]


def test_furnace_memory_names_and_keeps_the_policy(
    tiny_bundle: Path, easy_data: dict[str, Path], tmp_path: Path
) -> None:
    """`furnace memory` (role name, the default): the memory graphs join the bundle, the
    thresholds and alert policy stay the window heads', and the service loads it."""
    from service.engine import Engine
    from tests.helpers.cli import run_cli

    out = tmp_path / "named"
    key = Path(__file__).resolve().parents[2] / "keys" / "dev-bundle.key"
    args = ["memory", "--bundle", str(tiny_bundle), "--data", str(easy_data["train"])]
    run, _ = run_cli([*args, "--out", str(out), "--epochs", "2", "--signing-key", str(key)])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "role 'name'" in run.stdout
    before = json.loads((tiny_bundle / "manifest.json").read_text())
    after = json.loads((out / "manifest.json").read_text())
    assert after["memory"]["role"] == "name"
    assert after["thresholds"] == before["thresholds"]
    assert after.get("alert_policy") == before.get("alert_policy")
    assert "window_thresholds" not in after
    assert after["model_version"] != before["model_version"]
    engine = Engine(out)
    assert engine.manifest.memory is not None and engine.manifest.memory.role == "name"
    again, _ = run_cli([*args[:2], str(out), *args[3:], "--out", str(tmp_path / "twice")])
    assert again.returncode != 0 and "already has memory heads" in again.stderr


def test_a_sensor_without_labels_gets_the_other_sensors_memory_head_zero_shot() -> None:
    """Labels for the current only: the camera's memory head is the current-labelled one (the
    codes are shared, so it reads camera histories as they are), chosen as a zero-shot
    fallback; with a `both` head the camera takes one trained with its labels."""
    from training.memory import select_memory_heads

    rng = np.random.default_rng(0)
    n, slots = 40, 4
    val = {
        m: History(
            rng.integers(0, 8, (n, slots, 4)).astype(np.int64),
            np.ones((n, slots), np.float32),
            np.full((n, 3), 1 / 3, np.float32),
            rng.integers(0, 3, n).astype(np.int64),
            np.arange(n),
        )
        for m in ("current", "camera")
    }
    chosen, report = select_memory_heads({"current": _head().eval()}, val)
    assert chosen == {"current": "current", "camera": "current"}
    assert report["camera"]["rule"] == "zero_shot_fallback"
    assert report["current"]["rule"] == "best_validation_macro_f1"
    chosen, report = select_memory_heads({"current": _head(), "both": _head()}, val)
    assert chosen["camera"] == "both" and report["camera"]["rule"] == "best_validation_macro_f1"
