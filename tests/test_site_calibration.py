"""Site calibration on unlabelled normal operation (`furnace calibrate`,
furnace/site_calibration.py, training/export/site.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.service import DEV_PUBLIC_KEY
from tests.helpers.service import DEV_SIGNING_KEY as DEV_KEY
from training.export.site import (
    MIN_SCALE,
    FeatureProbe,
    feature_reference,
    norm_constants,
    refit,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "plant-current-sample.csv"


def _reference(mean: list[float], within: list[float], between: list[float]) -> dict:
    return {
        "features": len(mean),
        "mean": mean,
        "within_std": within,
        "within_std_q90": within,
        "between_std": between,
    }


def test_refit_moves_only_what_lies_outside_the_training_furnaces() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    site = np.stack(
        [
            rng.normal(1.0, 1.0, n),  # like a training furnace: unchanged
            rng.normal(10.0, 1.0, n),  # level far outside the furnaces: excess moved
            rng.normal(0.0, 4.0, n),  # four times the training spread: compressed
            (rng.random(n) < 0.02).astype(float),  # never varies in training: compressed most
        ],
        axis=1,
    ).reshape(n, 1, 4)
    ref = _reference([0.0, 0.0, 0.0, 0.0], [1.2, 1.2, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0])
    mean = np.array([0.5, 0.5, 0.5, 0.1], np.float32)
    std = np.array([2.0, 2.0, 2.0, 0.3], np.float32)
    new_mean, new_std, report = refit(mean, std, ref, site.astype(np.float32))
    z = (site.reshape(n, 4) - new_mean) / new_std
    z_old = (site.reshape(n, 4) - mean) / std
    np.testing.assert_allclose(z[:, 0], z_old[:, 0], rtol=1e-5, atol=1e-5)
    # feature 1: mean lands at the edge of the allowed band (2 between-std), spread kept
    assert ((site[:, 0, 1] - new_mean[1]) / new_std[1]).mean() == pytest.approx(
        (2.0 - 0.5) / 2, abs=0.05
    )
    assert z[:, 1].std() == pytest.approx(z_old[:, 1].std(), rel=1e-3)
    assert z[:, 2].std() == pytest.approx(z_old[:, 2].std() * max(0.25, MIN_SCALE), rel=0.05)
    assert (
        report["scale"][3] == pytest.approx(MIN_SCALE) and report["compressed"][0]["feature"] == 3
    )


def test_refit_refuses_a_reference_of_another_graph() -> None:
    ref = _reference([0.0] * 3, [1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="re-export"):
        refit(np.zeros(4, np.float32), np.ones(4, np.float32), ref, np.zeros((5, 1, 4), np.float32))


@pytest.mark.heavy
def test_the_exported_reference_is_the_graphs_own_features(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    ref = manifest["current_feature_reference"]
    mean, std = norm_constants(tiny_bundle / "current.onnx")
    assert ref["features"] == len(mean) == len(std) and ref["groups"] >= 2
    with np.load(tiny_bundle / "golden.npz") as g:
        x, b = g["current/current_a"], g["current/baseline_a"]
    feats = FeatureProbe(tiny_bundle / "current.onnx").features(x, b)
    assert feats.shape == (len(x), x.shape[1], len(mean))
    again = feature_reference(feats, ["a"] * 4 + ["b"] * (len(x) - 4))
    assert again["features"] == ref["features"]


@pytest.mark.heavy
def test_furnace_calibrate_on_a_plant_export_writes_a_verified_site_bundle(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from service.bundle import verify_bundle
    from service.engine import Engine
    from service.signing import BundleTrust, read_key_file

    out = tmp_path / "site"
    run, torch_loaded = run_cli(
        [
            "calibrate",
            "--bundle",
            str(tiny_bundle),
            "--normal",
            str(SAMPLE),
            "--out",
            str(out),
            "--holdout-fraction",
            "0.3",
            "--signing-key",
            str(DEV_KEY),
        ]
    )
    assert run.returncode == 0, run.stderr
    assert not torch_loaded
    assert "expected false episodes per furnace-hour" in run.stdout
    src = json.loads((tiny_bundle / "manifest.json").read_text())
    new = json.loads((out / "manifest.json").read_text())
    site = new["site_calibration"]
    assert site["source_model_version"] == src["model_version"] != new["model_version"]
    (normal,) = site["normal"]
    assert normal["kind"] == "plant_csv" and normal["rows"] == 2266
    import hashlib

    assert normal["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert site["holdout_hours"] > 0.08 and site["calibration_hours"] > 0.2
    assert set(site["measured"]) == {"calibration", "holdout"}
    # only the current graph's standardisation changed
    m0, s0 = norm_constants(tiny_bundle / "current.onnx")
    m1, s1 = norm_constants(out / "current.onnx")
    assert not (np.array_equal(m0, m1) and np.array_equal(s0, s1))
    trust = BundleTrust.from_texts(read_key_file(DEV_PUBLIC_KEY))
    verify_bundle(out, trust=trust)
    engine = Engine(out, trust=trust)  # checks the golden outputs against the new graph
    assert engine.manifest.model_version == new["model_version"]
    assert engine.manifest.thresholds.current == pytest.approx(new["thresholds"]["current"])
    calibrated = site["measured"]["calibration"]["current_only"]
    assert site["met_target"] == (
        calibrated["false_episodes_per_hour"] <= site["target_false_episodes_per_hour"]
    )


@pytest.mark.heavy
def test_a_site_bundle_keeps_the_memory_heads(tiny_memory_bundle: Path, tmp_path: Path) -> None:
    """`furnace calibrate` on a bundle with memory heads: the site bundle lists, hashes and
    stamps the memory graphs too, the service loads it with them and they still read the
    (re-normalised) current graph's codes."""
    from service.engine import Engine
    from service.signing import BundleTrust, read_key_file

    out = tmp_path / "site"
    args = ["calibrate", "--bundle", str(tiny_memory_bundle), "--normal", str(SAMPLE)]
    run, _ = run_cli([*args, "--out", str(out), "--signing-key", str(DEV_KEY)])
    assert run.returncode == 0, run.stderr
    new = json.loads((out / "manifest.json").read_text())
    memory = new["memory"]
    for m in ("current", "camera"):
        assert memory["graphs"][m]["file"] in new["files"]
    engine = Engine(out, trust=BundleTrust.from_texts(read_key_file(DEV_PUBLIC_KEY)))
    assert engine.has_memory and set(engine.memory_sessions) == {"current", "camera"}
    meta = engine.memory_sessions["current"].get_modelmeta().custom_metadata_map
    assert meta["model_version"] == new["model_version"]


@pytest.mark.heavy
def test_an_imported_dataset_calibrates_like_the_csv_and_old_bundles_say_what_to_do(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    run, _ = run_cli(["import", "--csv", str(SAMPLE), "--out", str(tmp_path / "plant")])
    assert run.returncode == 0, run.stderr
    assert "time column 6 (us), phases in columns 0,1,2" in run.stdout
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["current_feature_reference"]
    from training.export.bundle import rewrite_manifest
    from training.export.signing import load_signing_key

    rewrite_manifest(old, manifest, signing_key=load_signing_key(DEV_KEY))
    args = ["calibrate", "--normal", str(tmp_path / "plant"), "--signing-key", str(DEV_KEY)]
    run, _ = run_cli([*args, "--bundle", str(old), "--out", str(tmp_path / "x")])
    assert run.returncode == 2 and "re-export" in run.stderr
    run, _ = run_cli([*args, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "y")])
    assert run.returncode == 0, run.stderr
    site = json.loads((tmp_path / "y" / "manifest.json").read_text())["site_calibration"]
    assert site["normal"][0]["kind"] == "fmf" and site["normal"][0]["rows"] == 2266
