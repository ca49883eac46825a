"""The `furnace` CLI as a user runs it: simulate, then inspect the dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest

from tests.helpers.cli import run_furnace


def test_simulate_then_dataset_info(tmp_path: Path) -> None:
    out = tmp_path / "data"
    run = run_furnace(
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
    info = run_furnace("dataset", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["frames"] == 960 and summary["seconds"] == 480
    text = run_furnace("dataset", "info", str(out))
    assert "normal" in text.stdout and "electrode_breakage" in text.stdout


@pytest.mark.fault(
    "`furnace dataset info` of a missing folder; `simulate` without --out or 1 minute long",
    expected="exit 2 with a message naming the problem",
)
def test_errors_are_clear(tmp_path: Path) -> None:
    run = run_furnace("dataset", "info", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    run = run_furnace("simulate")
    assert run.returncode == 2 and "--out" in run.stderr
    run = run_furnace("simulate", "--out", str(tmp_path / "x"), "--minutes", "1")
    assert run.returncode == 2 and "lead-in" in run.stderr


def _with_env(**env: str) -> dict[str, str]:
    import os

    return {**os.environ, "FURNACE_AUTH_DISABLED": "true", **env}


@pytest.mark.fault(
    "`furnace serve` with FURNACE_PORT=abc",
    expected="exit 2 with one line naming FURNACE_PORT='abc' and the type it needs",
)
def test_settings_errors_name_the_variable_on_one_line() -> None:
    run = run_furnace("serve", env=_with_env(FURNACE_PORT="abc"), timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1, run.stderr
    assert "FURNACE_PORT='abc'" in run.stderr and "integer" in run.stderr


@pytest.mark.fault(
    "`furnace serve` with FURNACE_BUNDLE=defualt (misspelt)",
    expected="exit 2 with one line, no traceback, listing the bundles there are",
)
def test_a_misspelt_bundle_lists_the_available_ones() -> None:
    run = run_furnace("serve", env=_with_env(FURNACE_BUNDLE="defualt"), timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert "'defualt'" in run.stderr and "does not exist" in run.stderr
    assert "default" in run.stderr.split("bundles in")[1]


def test_version() -> None:
    run = run_furnace("--version")
    assert run.returncode == 0 and run.stdout.startswith("furnace ")


def test_library_info_logs_are_quiet_unless_verbose() -> None:
    # `furnace export` printed 135 INFO lines of the ONNX exporter (onnxscript, onnx_ir...).
    code = (
        "import logging, sys; from furnace.cli import configure_logging; "
        "configure_logging(sys.argv[1] == 'v'); "
        "logging.getLogger('onnxscript.optimizer').info('library chatter'); "
        "logging.getLogger('training.export.exporter').info('bundle written')"
    )
    quiet = subprocess.run([sys.executable, "-c", code, "q"], capture_output=True, text=True)
    assert "bundle written" in quiet.stderr and "library chatter" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code, "v"], capture_output=True, text=True)
    assert "library chatter" in loud.stderr
