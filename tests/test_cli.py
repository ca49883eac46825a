"""The `furnace` CLI as a user runs it: simulate, then inspect the dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd


def _furnace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "furnace", *args], capture_output=True, text=True, timeout=300
    )


def test_simulate_then_dataset_info(tmp_path: Path) -> None:
    out = tmp_path / "data"
    run = _furnace(
        "simulate", "--out", str(out), "--furnaces", "2", "--minutes", "4", "--seed", "5"
    )
    assert run.returncode == 0, run.stderr
    assert "x real time" in run.stdout
    root = out / "pixel-level"
    names = sorted(p.stem for p in (root / "videos").glob("*.mat"))
    assert names == ["sim-s5-f000-e00", "sim-s5-f001-e00"]
    # Plain h5py + pandas, the way the FMF-Benchmark README reads it.
    with h5py.File(root / "videos" / f"{names[0]}.mat", "r") as f:
        frames = f["data"][:].transpose(0, 3, 2, 1)
        masks = f["label"][:].transpose(0, 2, 1)
    assert frames.shape == (480, 64, 64, 3) and masks.shape == (480, 64, 64)
    currents = pd.read_csv(root / "currents" / f"{names[0]}.csv")
    assert currents.shape == (480, 4)
    stamps = pd.read_csv(root / "timestamps" / f"{names[0]}.csv")
    assert set(stamps.iloc[:, 0]) == set(currents.iloc[:, 0])
    info = _furnace("dataset", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["frames"] == 960 and summary["seconds"] == 480
    text = _furnace("dataset", "info", str(out))
    assert "normal" in text.stdout and "electrode_breakage" in text.stdout


def test_errors_are_clear(tmp_path: Path) -> None:
    run = _furnace("dataset", "info", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    run = _furnace("simulate")
    assert run.returncode == 2 and "--out" in run.stderr
    run = _furnace("simulate", "--out", str(tmp_path / "x"), "--minutes", "1")
    assert run.returncode == 2 and "lead-in" in run.stderr
