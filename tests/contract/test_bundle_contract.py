"""The bundle contract: what training exports, the service's reader accepts — in a process
that never imported torch — and any tampering is refused with the file and the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.bundle import BundleError, verify_bundle

pytestmark = pytest.mark.heavy

SERVICE_SIDE = """
import json, sys
from service.engine import Engine
engine = Engine(sys.argv[1])
import numpy as np
from service.types import CameraWindow, CurrentWindow, Window
w = engine.manifest.window
rng = np.random.default_rng(0)
x = (12000 + 300 * rng.standard_normal((w.segments, w.samples_per_segment, 3))).astype("float32")
frames = rng.integers(0, 255, (w.segments, w.frame_px, w.frame_px, 3), dtype=np.uint8)
win = Window("f1", 1e9, CurrentWindow(x, np.full(3, 12000, "float32")), CameraWindow(frames))
det = engine.score([win])[0]
print(json.dumps({"torch": "torch" in sys.modules, "version": engine.model_version,
                  "modalities": det.modalities, "p": sum(det.probabilities.values())}))
"""


def test_service_loads_the_exported_bundle_without_torch(tiny_bundle: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVICE_SIDE, str(tiny_bundle)],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    assert (
        got["version"] == json.loads((tiny_bundle / "manifest.json").read_text())["model_version"]
    )
    assert got["modalities"] == ["current", "camera"]
    assert got["p"] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


@pytest.mark.parametrize("name", ["current.onnx", "camera.onnx", "golden.npz"])
@pytest.mark.fault(
    "one byte flipped in {name}",
    expected="BundleError: its sha256 does not match the manifest",
)
def test_a_flipped_byte_is_refused(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name}: sha256 .* does not match"):
        verify_bundle(bundle_copy)


def _edit(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version 99 is not supported"),
        ({"format": "other"}, "format is 'other'"),
        ({"golden": "../outside.npz"}, "must be a plain name"),
        ({"class_names": ["abnormal", "normal"]}, "must start with 'normal'"),
        (
            {"thresholds": {"current": 0.5, "camera": 2.0, "fused": 0.5, "target_far": 0.01}},
            "'camera' must lie in",
        ),
        (
            {"thresholds": {"current": 0.5, "camera": 0.5, "fused": 2.0, "target_far": 0.01}},
            "'fused' must lie in",  # averaging (no `fusion`): fused is a probability
        ),
        (
            {
                "thresholds": {
                    "current": 0.5,
                    "camera": 0.5,
                    "fused": 2.0,
                    "fusion": "vote",
                    "target_far": 0.01,
                }
            },
            "'fusion' must be one of",
        ),
    ],
)
@pytest.mark.fault(
    "a malformed manifest: unsupported format, a path as golden, wrong class order, thresholds "
    "out of range, unknown fusion",
    expected="BundleError naming the field",
)
def test_a_malformed_manifest_is_refused(
    bundle_copy: Path, change: dict[str, object], message: str
) -> None:
    _edit(bundle_copy, **change)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle_copy)


@pytest.mark.fault(
    "a bundle with an unlisted extra file, a missing listed file; a missing folder",
    expected="BundleError naming the file",
)
def test_missing_and_unlisted_files_are_refused(bundle_copy: Path) -> None:
    shutil.copy(bundle_copy / "camera.onnx", bundle_copy / "extra.onnx")
    with pytest.raises(BundleError, match=r"\['extra.onnx'\] are not listed"):
        verify_bundle(bundle_copy)
    (bundle_copy / "extra.onnx").unlink()
    (bundle_copy / "golden.npz").unlink()
    with pytest.raises(BundleError, match="golden.npz: listed in the manifest but missing"):
        verify_bundle(bundle_copy)
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(bundle_copy / "nope")


@pytest.mark.fault(
    "a manifest window spec whose long baseline the graph cannot read",
    expected="BundleError naming the column mismatch",
)
def test_a_window_spec_that_does_not_fit_the_graphs_baseline_is_refused(bundle_copy: Path) -> None:
    raw = json.loads((bundle_copy / "manifest.json").read_text())
    window = dict(raw["window"], long_baseline_seconds=600.0)  # the graph reads 3 columns
    _edit(bundle_copy, window=window)
    with pytest.raises(BundleError, match="baseline_a has 3 columns but the window spec needs 6"):
        verify_bundle(bundle_copy)
    _edit(bundle_copy, window=dict(window, long_baseline_seconds=60.0))
    with pytest.raises(BundleError, match="must be 0 or at least baseline_seconds"):
        verify_bundle(bundle_copy)
