"""Package boundaries (docs/design/architecture.md "Layout"): the simulator is numpy-only and never
reaches model/ or training/; proven in a fresh interpreter, since this one has torch loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN_IN_SIMULATOR = ("torch", "model", "training", "service", "pandas", "h5py", "matplotlib")


@pytest.mark.parametrize(
    "module",
    [
        "simulator.dataset",
        "simulator.stats",
        "simulator.faults",
        "simulator.camera",
        "simulator.scenario",
        "simulator.png",
        "simulator.replay",  # may import redis, nothing else outside numpy
    ],
)
def test_simulator_imports_numpy_only(module: str) -> None:
    code = (
        f"import sys, {module}; "
        f"print(','.join(m for m in {FORBIDDEN_IN_SIMULATOR!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulled in: {out.stdout.strip()}"


@pytest.mark.parametrize("module", ["simulator.replay"])
def test_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_replayer_imports_redis() -> None:
    code = "import sys, simulator.scenario, simulator.png; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from furnace.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
