"""The compose stack built and run for real, without any container registry (`make compose-smoke`).

Marker `compose`, left out of `make test`: it needs root, a running dockerd, debootstrap and
the Debian mirror and PyPI (or a plant's mirrors of them), and takes minutes (docs/deploy.md,
"Air-gapped build", has the measured time). Steps, as a plant without Docker Hub would do them:

1. deploy/airgap/base-image.sh: debootstrap Debian, `docker import` it (skipped when it exists);
2. `build` with docker-compose.yml + deploy/airgap/docker-compose.airgap.yml: the service image
   on that base from the lock, Redis, Prometheus and Alertmanager from Debian packages;
3. `up -d` (every service but Grafana, which Debian does not package), then: /readyz answers,
   every container turns healthy (each has its own healthcheck), the feed's furnaces get
   detections, Prometheus scrapes both replicas and knows the Alertmanager, Alertmanager loaded
   deploy/alertmanager/alertmanager.yml, the feed's log has no progress bar;
4. `down -v`, also on failure (after the logs went into the failure message).

Compose v1 (Debian's docker-compose) runs it unless FURNACE_SMOKE_COMPOSE names another command
(e.g. "docker compose"). Timings, Redis memory per stream and container memory go to
out/compose-smoke/report.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.compose_cli import V1_HINT, compose_v1, compose_v2

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "furnace-smoke"
FILES = ["-f", "docker-compose.yml", "-f", "deploy/airgap/docker-compose.airgap.yml"]
SERVICES = ("redis", "sentinel-0", "sentinel-1", "feed", "prometheus", "alertmanager")
FURNACES = 4  # the feed's `furnace replay --furnaces 4`
API_KEY = "smoke-api-key"
REPORT = ROOT / "out" / "compose-smoke" / "report.json"


def _compose_command() -> list[str]:
    configured = os.environ.get("FURNACE_SMOKE_COMPOSE")
    if configured:
        return shlex.split(configured)
    command = compose_v1() or compose_v2()
    if command is None:
        pytest.fail(f"no docker compose found: {V1_HINT}", pytrace=False)
    return command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    api: str
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.compose, "-p", PROJECT, *FILES, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check(self, *args: str, timeout: float = 600) -> str:
        out = self.run(*args, timeout=timeout)
        assert out.returncode == 0, f"compose {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
        return out.stdout

    def container(self, service: str) -> str:
        ids = self.check("ps", "-q", service).split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def docker(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        assert out.returncode == 0, f"docker {' '.join(args)} failed:\n{out.stdout}{out.stderr}"
        return out.stdout

    def fetch(self, service: str, url: str) -> Any:
        """GET a JSON document from inside a container (the monitoring ports are not published)."""
        return json.loads(self.docker("exec", self.container(service), "wget", "-qO-", url))

    def redis(self, *args: str) -> str:
        return self.docker("exec", self.container("redis"), "redis-cli", *args).strip()


def _wait(what: str, check: Callable[[], bool], deadline_s: float, stack: Stack) -> None:
    start = time.monotonic()
    last_error = ""
    while time.monotonic() - start < deadline_s:
        try:
            if check():
                stack.timings[what] = round(time.monotonic() - start, 1)
                return
        except (AssertionError, OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            last_error = repr(exc)
        time.sleep(2)
    pytest.fail(f"{what}: not within {deadline_s:.0f} s ({last_error})", pytrace=False)


def _get(stack: Stack, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(stack.api + path, headers={"X-API-Key": API_KEY})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("docker") is None:
        pytest.fail("docker CLI not found: apt-get install -y docker.io", pytrace=False)
    version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if version.returncode != 0:
        pytest.fail(
            f"dockerd does not answer ({version.stderr.strip()}): start it, e.g. "
            "`dockerd >/var/log/dockerd.log 2>&1 &`",
            pytrace=False,
        )
    secrets = tmp_path_factory.mktemp("secrets")
    for name, value in {
        "api_keys": API_KEY,
        "admin_keys": "smoke-admin-key",
        "grafana_admin_password": "smoke-password",
        # The shipped models/default is signed with the development key.
        "trusted_keys": (ROOT / "keys" / "dev-bundle.pub").read_text().strip(),
    }.items():
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o644)  # uid 10001 in the container reads it
    port = _free_port()
    env = {
        **os.environ,
        "SENTINEL_SECRETS_DIR": str(secrets),
        "SENTINEL_API_PORT": str(port),
        "GRAFANA_PORT": str(_free_port()),
        "COMPOSE_PROJECT_NAME": PROJECT,
    }
    stack = Stack(_compose_command(), env, f"http://127.0.0.1:{port}")
    stack.run("down", "-v", "--remove-orphans", "-t", "5")  # leftovers of an aborted run

    t0 = time.monotonic()
    base = subprocess.run(
        [str(ROOT / "deploy" / "airgap" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    stack.timings["base_image_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    stack.check("build", timeout=2400)
    stack.timings["build_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    try:
        stack.check("up", "-d", timeout=600)
        stack.timings["up_s"] = round(time.monotonic() - t0, 1)
        yield stack
    finally:
        down = stack.run("down", "-v", "--remove-orphans", "-t", "30", timeout=600)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="module")
def report(stack: Stack) -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = {"compose": stack.compose, "timings_s": stack.timings}
    yield data
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(data, indent=2) + "\n")


def _logs_on_failure(stack: Stack) -> str:
    out = stack.run("logs", "--no-color", "--tail", "40", timeout=120)
    return out.stdout[-12000:] + out.stderr[-2000:]


def test_stack_runs_detects_and_is_scraped(stack: Stack, report: dict[str, Any]) -> None:
    try:
        _check_stack(stack, report)
    except (AssertionError, pytest.fail.Exception) as exc:
        msg = f"{exc}\n--- compose logs ---\n{_logs_on_failure(stack)}"
        raise AssertionError(msg) from exc


def _check_stack(stack: Stack, report: dict[str, Any]) -> None:
    # /readyz of the published replica: bundle, Redis, shard lease, reader.
    _wait("readyz_s", lambda: _get(stack, "/readyz")[0] == 200, 300, stack)

    # Every container healthy by its own check (the feed's is not /readyz).
    def all_healthy() -> bool:
        states = {
            s: stack.docker("inspect", "-f", "{{.State.Health.Status}}", stack.container(s)).strip()
            for s in SERVICES
        }
        report["health"] = states
        return all(state == "healthy" for state in states.values())

    _wait("all_healthy_s", all_healthy, 240, stack)

    # Detections for every furnace of the feed, decided by both replicas together.
    def detected() -> bool:
        status, body = _get(stack, "/v1/furnaces")
        assert status == 200, status
        with_detections = [f for f in body["furnaces"] if f["last_window_end"] is not None]
        report["furnaces"] = [
            {k: f.get(k) for k in ("furnace_id", "condition", "score")} for f in with_detections
        ]
        return len(with_detections) >= FURNACES

    _wait("detections_s", detected, 180, stack)

    # Prometheus scrapes both replicas and sends alerts to the Alertmanager.
    def scraped() -> bool:
        targets = stack.fetch("prometheus", "http://127.0.0.1:9090/api/v1/targets")
        health = {t["labels"]["instance"]: t["health"] for t in targets["data"]["activeTargets"]}
        report["targets"] = health
        return health == {"sentinel-0:8000": "up", "sentinel-1:8000": "up"}

    _wait("scraped_s", scraped, 120, stack)

    def counted() -> bool:
        query = urllib.parse.quote("sum(furnace_windows_scored_total)")
        result = stack.fetch("prometheus", f"http://127.0.0.1:9090/api/v1/query?query={query}")
        samples = result["data"]["result"]
        return bool(samples) and float(samples[0]["value"][1]) > 0

    _wait("windows_in_prometheus_s", counted, 120, stack)
    managers = stack.fetch("prometheus", "http://127.0.0.1:9090/api/v1/alertmanagers")
    active = [m["url"] for m in managers["data"]["activeAlertmanagers"]]
    assert any("alertmanager:9093" in url for url in active), managers

    status = stack.fetch("alertmanager", "http://127.0.0.1:9093/api/v2/status")
    assert "receiver: operators" in status["config"]["original"], status["config"]

    # No progress bar in the feed's log (TQDM_DISABLE in the image).
    feed_log = stack.docker("logs", stack.container("feed"))
    assert "replaying" in feed_log
    assert "\r" not in feed_log and "sensor time:" not in feed_log

    # What the memory budget of docs/deploy.md ("Redis memory") is checked against.
    report["redis"] = _redis_usage(stack)
    report["containers"] = {s: _stats(stack.container(s)) for s in SERVICES}


def _stats(container: str) -> str:
    """Memory and CPU of a container, for the report only (`docker stats` sometimes answers EOF)."""
    out = None
    for _ in range(3):
        out = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}} {{.CPUPerc}}", container],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return f"unavailable: {out.stderr.strip() if out else ''}"


def _redis_usage(stack: Stack) -> dict[str, Any]:
    info = dict(
        line.split(":", 1)
        for line in stack.redis("info", "memory").splitlines()
        if ":" in line and not line.startswith("#")
    )
    keys = sorted(stack.redis("--scan", "--pattern", "furnace:*").split())
    per_key = {}
    for key in keys:
        kind = stack.redis("type", key)
        size = int(stack.redis("memory", "usage", key, "samples", "0") or 0)
        entries = int(stack.redis("xlen", key)) if kind == "stream" else None
        per_key[key] = {
            "type": kind,
            "bytes": size,
            "entries": entries,
            "bytes_per_entry": round(size / entries) if entries else None,
        }
    return {
        "used_memory": int(info["used_memory"]),
        "maxmemory": int(info["maxmemory"]),
        "keys": per_key,
    }
