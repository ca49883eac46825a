"""The service never imports torch (docs/design/architecture.md "Layout"): importing `service.main`,
building the app, running its lifespan and scoring a window over HTTP leaves torch out of
`sys.modules`. Checked in a fresh interpreter, since this test process has torch loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.service import REPO

CHILD = """
import json, sys
from pathlib import Path
import service.main
from fastapi.testclient import TestClient
from service.settings import Settings
from tests.helpers.service import T0, window_body
from service.bundle import read_manifest

bundle = Path(sys.argv[1])
keys = Path(service.main.__file__).parents[1] / "keys/dev-bundle.pub"
settings = Settings(bundle=str(bundle), auth_disabled=True, ingest=False, redis_url=sys.argv[2],
                    key_prefix=sys.argv[3], trusted_keys_file=keys)
app = service.main.create_app(settings)
with TestClient(app) as client:
    body = window_body(read_manifest(bundle).window, T0 + 400.0)
    response = client.post("/v1/furnaces/nt1/windows", json=body)
torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
out = {"status": response.status_code, "decided_by": response.json().get("decided_by")}
print(json.dumps({**out, "torch": torch}))
"""


@pytest.mark.timeout(120)
def test_service_runs_without_importing_torch(
    bundle_dir: Path, redis_url: str, key_prefix: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle_dir), redis_url, key_prefix],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=110,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == 200
    assert got["decided_by"] == "both"
    assert got["torch"] == []
