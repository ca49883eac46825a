"""The README's main command: `furnace demo` runs simulator -> embedded Redis -> service ->
detections on a fresh machine, with no Redis configured and no training step."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.heavy


def test_demo_runs_end_to_end_on_embedded_redis() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FURNACE_")}
    out = subprocess.run(
        [sys.executable, "-m", "furnace", "demo", "--seconds", "24", "--speed", "20"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "embedded Redis" in text
    found = re.search(r"(\d+) detections, (\d+) alert episodes", text)
    assert found is not None, text[-3000:]
    assert int(found.group(1)) > 0, text[-3000:]  # windows flowed through the service
    assert "summary: scheduled conditions" in text
