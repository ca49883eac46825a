"""A real Prometheus scrapes the real service's /metrics and runs every dashboard expression.

Debian's `prometheus` (2.42, the version floor in docs/design/serving.md) listens on a free loopback
port with a temporary storage folder, scrapes `scrape_target` every second and loads
deploy/prometheus/rules.yml. `scrape_target` is the real app (`service.main.create_app`) served by
uvicorn on a free loopback port, with its own Redis key prefix and real traffic: a furnace's streams
read by the consumer (one poison entry included), windows POSTed over HTTP (one rejected).
`serve_metrics` serves a bare `Metrics` object instead, for debugging. The binaries must be
installed (`.ci/run` does it): these tests fail, never skip, without them.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from service.bundle import read_manifest
from service.main import create_app
from service.metrics import Metrics
from service.types import WindowSpec
from tests.deploy.test_deploy_files import (
    RULES_YML,
    all_panels,
    dashboard,
    dashboard_exprs,
    rules,
)
from tests.helpers.redis_keys import delete_prefix
from tests.helpers.service import (
    WRITE_KEY,
    make_settings,
    publish_synthetic,
    resolve_bundle,
    serve_app,
    window_body,
    window_ends,
    with_thresholds,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STARTUP_SECONDS = 30.0
FURNACE = "F01"  # the furnace whose streams the served app reads
HTTP_FURNACE = "F02"  # a configured furnace that only gets windows over HTTP
# What Grafana puts in place of the dashboard's variables: "All" and a multi-value selection.
SUBSTITUTIONS = (
    {"$__rate_interval": "1m", "$furnace": ".*"},
    {"$__rate_interval": "20s", "$furnace": "F01|other"},
)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: install Debian's prometheus package "
            "(`apt-get install -y prometheus`; .ci/run does it)",
            pytrace=False,
        )
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(what: str, check: Callable[[], bool], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {deadline_s:.0f} s waiting for {what}", pytrace=False)


@contextmanager
def serve_metrics(metrics: Metrics) -> Iterator[str]:
    """Serve `metrics.render()` at http://127.0.0.1:{free port}/metrics, as the app's route does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/metrics":
                self.send_error(404)
                return
            body, content_type = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Prometheus:
    """A running `prometheus` process and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log = log

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; a 4xx answer (a bad query) is returned, not raised."""
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def run_prometheus(
    target_url: str, workdir: Path, *, rule_files: tuple[Path, ...] = ()
) -> Iterator[Prometheus]:
    """Start Debian's `prometheus` scraping `target_url` every second; stop it on exit."""
    binary = _binary("prometheus")
    target = urllib.parse.urlsplit(target_url)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "sentinel",
                "scheme": target.scheme,
                "metrics_path": target.path or "/metrics",
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = workdir / "prometheus.log"

    for _ in range(3):  # the free port can be taken between probing and binding
        port = _free_port()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log)
        try:
            if _wait_ready(prometheus):
                yield prometheus
                return
        finally:
            _stop(process)
    pytest.fail(f"prometheus did not start:\n{prometheus.log_tail()}", pytrace=False)


def _wait_ready(prometheus: Prometheus) -> bool:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if prometheus.process.poll() is not None:
            return False  # exited, e.g. the port was taken
        try:
            with urllib.request.urlopen(f"{prometheus.base_url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class ServedApp:
    metrics_url: str
    model_version: str
    base_url: str
    prefix: str
    spec: WindowSpec
    client: redis.Redis
    stream_end: float  # sensor time of the end of what the stream holds (Unix s)


def _post(base_url: str, furnace_id: str, body: dict[str, Any]) -> int:
    headers = {"X-API-Key": WRITE_KEY, "Content-Type": "application/json"}
    post = urllib.request.Request(
        f"{base_url}/v1/furnaces/{furnace_id}/windows",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(post, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def served_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[ServedApp]:
    """The real app under uvicorn, after scoring windows from a stream and over HTTP.

    Its bundle flags every window (thresholds near 0), so alert episodes open; the stream's
    sensor time is the last 40 s of the wall clock, so detection delays are observed; one
    camera entry is poison and one current entry arrives after its window closed (late)."""
    bundle = with_thresholds(
        resolve_bundle(request, tmp_path_factory), tmp_path_factory.mktemp("flag") / "b", 1e-6
    )
    spec = read_manifest(bundle).window
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(redis_url)
    try:
        start = float(round(time.time() - 40.0))
        publish_synthetic(client, prefix, FURNACE, spec, start, 30.0)
        client.xadd(f"{prefix}furnace:{FURNACE}:camera", {"ts": f"{start:.3f}", "image": b"junk"})
        settings = make_settings(
            redis_url, prefix, bundle, furnaces=[FURNACE, HTTP_FURNACE], no_data_seconds=300.0
        )
        with serve_app(create_app(settings, group_start_id="0")) as base:
            last = start + 30.0 - 1.0 / spec.rate_hz - 1.0  # the newest end + grace it can close
            _wait_for(
                "detections of the stream",
                lambda: (
                    bool(window_ends(client, prefix, FURNACE))
                    and max(window_ends(client, prefix, FURNACE)) >= last - spec.hop_seconds
                ),
                STARTUP_SECONDS,
            )
            late = {"ts": f"{start + 1.25:.3f}", "a": "12000", "b": "12000", "c": "12000"}
            client.xadd(f"{prefix}furnace:{FURNACE}:current", late)  # type: ignore[arg-type]
            assert _post(base, FURNACE, window_body(spec, start + 36.0)) == 200
            assert _post(base, FURNACE, {"current": {}}) == 422
            yield ServedApp(
                f"{base}/metrics",
                read_manifest(bundle).model_version,
                base,
                prefix,
                spec,
                client,
                start + 30.0,
            )
    finally:
        client.close()
        delete_prefix(redis_url, prefix)


@pytest.fixture(scope="module")
def scrape_target(served_app: ServedApp) -> str:
    """URL of the /metrics endpoint Prometheus scrapes: the real app's."""
    return served_app.metrics_url


@pytest.fixture(scope="module")
def prometheus(
    scrape_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    with run_prometheus(scrape_target, workdir, rule_files=(RULES_YML,)) as prom:

        def target_up() -> bool:
            result = prom.query('up{job="sentinel"}')["data"]["result"]
            return bool(result) and result[0]["value"][1] == "1"

        _wait_for("up == 1", target_up, STARTUP_SECONDS)
        # A few scrapes more, so rate() has samples to work on.
        time.sleep(3)
        yield prom


@pytest.fixture(scope="module")
def live_traffic(prometheus: Prometheus, served_app: ServedApp) -> Prometheus:
    """While Prometheus scrapes: an alert episode opens on the HTTP furnace (its counters are
    already scraped at 0) from windows ending just before now, and the stream furnace gets its
    sensor data up to now, so stream detections (the only ones whose delays are observed)
    are scored while Prometheus watches."""
    spec = served_app.spec
    now = time.time()
    first = (now // spec.hop_seconds - 12) * spec.hop_seconds
    for k in range(8):
        body = window_body(spec, first + k * spec.hop_seconds, seed=k)
        assert _post(served_app.base_url, HTTP_FURNACE, body) == 200
    client, prefix = served_app.client, served_app.prefix
    start = served_app.stream_end
    publish_synthetic(client, prefix, FURNACE, spec, start, time.time() - start, seed=1)
    _wait_for(
        "stream detections scored while Prometheus scrapes",
        lambda: max(window_ends(client, prefix, FURNACE)) >= start + spec.hop_seconds,
        STARTUP_SECONDS,
    )
    time.sleep(3)  # a few scrapes
    return prometheus


def _substitute(expr: str, values: dict[str, str]) -> str:
    for variable, value in values.items():
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def test_prometheus_ingests_the_exposed_series(
    prometheus: Prometheus, served_app: ServedApp
) -> None:
    answer = prometheus.query("furnace_model_info")
    assert answer["status"] == "success"
    (series,) = answer["data"]["result"]
    assert series["metric"]["model_version"] == served_app.model_version
    # The dashboard's furnace variable lists this label's values.
    values = prometheus.get("/api/v1/label/furnace/values", **{"match[]": "furnace_modality_up"})
    assert values["status"] == "success"
    assert FURNACE in values["data"]
    for name in ("furnace_windows_scored_total", "furnace_dead_letters_total"):
        result = prometheus.query(f"sum({name})")["data"]["result"]
        assert result and float(result[0]["value"][1]) > 0, name


@pytest.mark.parametrize("values", SUBSTITUTIONS, ids=["all", "multi"])
def test_every_dashboard_expression_runs(prometheus: Prometheus, values: dict[str, str]) -> None:
    failures = []
    for expr in dashboard_exprs():
        query = _substitute(expr, values)
        answer = prometheus.query(query)
        if answer["status"] != "success":
            failures.append(f"{query}\n    -> {answer.get('error')}")
    assert not failures, "\n".join(failures)


def test_every_alert_rule_runs(prometheus: Prometheus) -> None:
    for rule in rules():
        answer = prometheus.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer.get("error"))

    def all_evaluated() -> bool:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        return len(loaded) == len(rules()) and all(
            not rule["lastEvaluation"].startswith("0001") for rule in loaded
        )

    _wait_for("every rule evaluated once", all_evaluated, 15)
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy


def test_promtool_check_metrics_on_the_scrape(scrape_target: str) -> None:
    with urllib.request.urlopen(scrape_target, timeout=10) as response:
        body = response.read()
        assert response.headers["Content-Type"].startswith("text/plain")
    out = subprocess.run(
        [_binary("promtool"), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def _values(answer: dict[str, Any]) -> list[float]:
    data = answer["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    return [float(series["value"][1]) for series in data["result"]]


def test_every_dashboard_query_returns_data(live_traffic: Prometheus) -> None:
    # Every panel shows something against a live service: no empty panel, no NaN-only panel.
    empty = []
    for expr in dashboard_exprs():
        query = _substitute(expr, SUBSTITUTIONS[0])
        answer = live_traffic.query(query)
        assert answer["status"] == "success", (query, answer.get("error"))
        values = _values(answer)
        if not values or all(math.isnan(v) for v in values):
            empty.append(f"{query} -> {answer['data']['result']}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def _stored_episodes(served_app: ServedApp) -> tuple[set[str], int]:
    """Furnaces with an open episode in Redis, and the opened events of HTTP_FURNACE."""
    client, prefix = served_app.client, served_app.prefix
    open_now = set()
    for furnace_id in (FURNACE, HTTP_FURNACE):
        raw = client.hget(f"{prefix}furnace:{furnace_id}:state", "episode")
        if raw:
            open_now.add(furnace_id)
    opened = sum(
        1
        for _, fields in client.xrange(f"{prefix}alerts")  # type: ignore[union-attr]
        if fields[b"event"] == b"opened" and fields[b"furnace_id"] == HTTP_FURNACE.encode()
    )
    return open_now, opened


def test_alert_panels_match_the_alert_state_in_redis(
    live_traffic: Prometheus, served_app: ServedApp
) -> None:
    open_now, opened = _stored_episodes(served_app)
    assert open_now == {FURNACE, HTTP_FURNACE} and opened == 1
    panels = {
        title: target["expr"]
        for title, target in (
            (panel["title"], target)
            for panel in all_panels(dashboard()["panels"])
            for target in panel.get("targets", [])
        )
    }
    in_alert = _values(
        live_traffic.query(_substitute(panels["Furnaces in alert"], SUBSTITUTIONS[0]))
    )
    assert in_alert == [float(len(open_now))]
    listed = live_traffic.query(_substitute(panels["Open alert episodes"], SUBSTITUTIONS[0]))
    assert {s["metric"]["furnace"] for s in listed["data"]["result"]} == open_now
    episodes = live_traffic.query(
        _substitute(
            panels["Alert episodes opened (24 h)"], {**SUBSTITUTIONS[0], "$furnace": HTTP_FURNACE}
        )
    )
    # The episode opened while Prometheus watched: counted once (a series born at 1 was not).
    assert sum(_values(episodes)) == opened


def test_no_phantom_other_furnace(live_traffic: Prometheus) -> None:
    # Windows rebuilt from history at adoption are scored before discovery registers the
    # furnace; they used to report as `other`, and its stale health kept SensorDown firing.
    values = live_traffic.get("/api/v1/label/furnace/values", **{"match[]": "furnace_modality_up"})
    assert "other" not in values["data"]
    assert FURNACE in values["data"]
