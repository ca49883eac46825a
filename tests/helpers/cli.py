"""Run `furnace` commands in a fresh interpreter (this test process has torch loaded)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

TORCH_MARK = "torch loaded:"


def run_cli(
    args: Sequence[str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], bool]:
    """`furnace.cli.main(args)` in a child interpreter: the finished process and whether the
    command imported torch. Its last stdout line is the torch mark, the rest is the command's."""
    code = (
        "import sys; from furnace.cli import main; "
        f"rc = main({list(args)!r}); print({TORCH_MARK!r}, 'torch' in sys.modules); sys.exit(rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    return run, f"{TORCH_MARK} False" not in run.stdout  # no mark counts as loaded


def run_furnace(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m furnace ARGS` as a user runs it (output captured as text); `env` replaces
    the environment when given."""
    return subprocess.run(
        [sys.executable, "-m", "furnace", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
    )
