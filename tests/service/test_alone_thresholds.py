"""Single-sensor ("alone") ratio thresholds of max-ratio bundles (`thresholds.current_alone`,
`thresholds.camera_alone`; service/bundle.py `Thresholds`): a window one modality decides is
compared with that modality's alone threshold, a window both decide is not touched by it, and
a manifest without the keys decides as before (1.0). The engine runs the bundle's golden
windows, so the figures come from the real graphs, never from literals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.bundle import BundleError, read_manifest, verify_bundle
from service.engine import Engine
from service.types import CameraWindow, CurrentWindow, Window

END = 1_700_000_000.0


def _copy(bundle: Path, dest: Path, **thresholds: Any) -> Path:
    """A copy of `bundle` with `thresholds` keys set (None: removed). The manifest's own
    sha256 is not in its `files`, so the copy still verifies."""
    shutil.copytree(bundle, dest)
    path = dest / "manifest.json"
    raw = json.loads(path.read_text())
    for key, value in thresholds.items():
        if value is None:
            raw["thresholds"].pop(key, None)
        else:
            raw["thresholds"][key] = value
    path.write_text(json.dumps(raw, indent=2))
    return dest


def _golden_windows(engine: Engine) -> list[Window]:
    """The bundle's golden inputs as windows: both modalities, camera only, current only."""
    with np.load(engine.manifest.folder / engine.manifest.golden) as g:
        cur = CurrentWindow(g["current/current_a"][0], g["current/baseline_a"][0])
        cam = CameraWindow(g["camera/frames"][0])
    return [
        Window("f1", END, cur, cam),
        Window("f1", END, None, cam, extra_health={"current": "missing"}),
        Window("f1", END, cur, None, extra_health={"camera": "missing"}),
    ]


@pytest.fixture(scope="module")
def plain(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The bundle without any alone key (the default bundle has none; removed if it has)."""
    dest = tmp_path_factory.mktemp("alone") / "plain"
    engine = Engine(_copy(bundle_dir, dest, current_alone=None, camera_alone=None))
    if engine.manifest.thresholds.fusion != "max_ratio":
        pytest.skip("alone thresholds apply to max-ratio bundles")
    return engine


def test_a_manifest_without_alone_keys_decides_a_lone_modality_against_1(plain: Engine) -> None:
    thr = plain.manifest.thresholds
    assert (thr.current_alone, thr.camera_alone) == (1.0, 1.0)
    assert thr.for_modalities(("camera",)) == 1.0 and thr.for_modalities(("current",)) == 1.0
    both, camera, current = plain.score(_golden_windows(plain))
    assert both.modalities == ("current", "camera") and both.threshold == thr.fused
    assert camera.modalities == ("camera",) and camera.threshold == 1.0
    assert current.modalities == ("current",) and current.threshold == 1.0


def test_camera_alone_moves_the_camera_only_decision_and_nothing_else(
    plain: Engine, tmp_path: Path
) -> None:
    before = plain.score(_golden_windows(plain))
    ratio = before[1].score  # camera alone: its score / the camera threshold
    assert ratio == pytest.approx(
        before[1].per_modality["camera"].score / plain.manifest.thresholds.camera
    )
    # an alone threshold on the other side of the window's ratio flips its decision
    alone = ratio * 2.0 if before[1].is_abnormal else ratio / 2.0
    engine = Engine(_copy(plain.manifest.folder, tmp_path / "alone", camera_alone=alone))
    assert engine.manifest.thresholds.camera_alone == pytest.approx(alone)
    after = engine.score(_golden_windows(engine))
    # camera only: the same ratio, against camera_alone
    assert after[1].score == pytest.approx(ratio)
    assert after[1].threshold == pytest.approx(alone)
    assert after[1].is_abnormal is (not before[1].is_abnormal)
    # both modalities and current only: decided exactly as before
    for a, b in ((after[0], before[0]), (after[2], before[2])):
        assert (a.score, a.threshold, a.is_abnormal, a.condition, a.lead) == (
            b.score,
            b.threshold,
            b.is_abnormal,
            b.condition,
            b.lead,
        )


@pytest.mark.fault(
    "a manifest with alone thresholds out of range (current_alone -1, camera_alone above "
    "max_ratio)",
    expected="BundleError naming the key",
)
def test_the_reader_checks_the_alone_keys(plain: Engine, tmp_path: Path) -> None:
    folder = _copy(plain.manifest.folder, tmp_path / "neg", current_alone=-1.0)
    with pytest.raises(BundleError, match="current_alone"):
        verify_bundle(folder)
    folder = _copy(plain.manifest.folder, tmp_path / "avg", fusion="average", fused=0.5)
    assert read_manifest(folder).thresholds.camera_alone == 1.0  # absent: fine
    folder = _copy(folder, tmp_path / "avg-alone", camera_alone=1.2)
    with pytest.raises(BundleError, match="camera_alone.*max_ratio"):
        read_manifest(folder)
