"""Issue 14 items 3, 4 and 5 against the real app and a real Redis: a costly POST is refused
from the image headers and never holds the streams' inference worker; idle sockets do not
turn the server's answers into 503 (a real uvicorn server, real sockets); a bundle changed
and re-hashed after signing is not reloaded."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

import service.api
from service.bundle import Manifest
from service.main import create_app
from service.server import server_config
from service.settings import Settings
from service.types import WindowSpec
from tests.helpers.service import (
    ADMIN,
    T0,
    WRITE,
    free_port,
    make_settings,
    publish_synthetic,
    run_server,
    wait_for,
    window_body,
    window_ends,
)


def _zero_png_b64(px: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (px, px)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.mark.fault(
    "one authenticated 4.2 MB POST of 64 zero PNG frames of 4096x4096 (1.07 G pixels)",
    expected="422 from the image headers in milliseconds, before any pixel is decoded "
    "(FURNACE_MAX_REQUEST_PIXELS)",
)
def test_a_request_over_the_pixel_budget_is_refused_from_the_headers(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    image = _zero_png_b64(4096)
    body = {"camera": {"frames": [{"ts": T0 + 0.25 * i, "image": image} for i in range(64)]}}
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    with TestClient(create_app(settings)) as client:
        t0 = time.perf_counter()
        response = client.post("/v1/furnaces/px1/windows", json=body, headers=WRITE)
        seconds = time.perf_counter() - t0
        metrics = client.get("/metrics").text
    assert response.status_code == 422, response.text
    assert "FURNACE_MAX_REQUEST_PIXELS" in response.text
    assert seconds < 3.0, f"took {seconds:.2f} s"  # the unbounded decode took 24-47 s
    assert 'reason="too_large"' in metrics


@pytest.mark.fault(
    "an HTTP window stuck in decoding (the pool is busy) while furnaces stream into Redis",
    expected="stream windows are still scored and committed and /readyz stays 200: HTTP "
    "decoding and inference have their own pools",
)
def test_a_stuck_http_request_does_not_delay_the_streams(
    redis_url: str,
    key_prefix: str,
    bundle_dir: Path,
    spec: WindowSpec,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    entered = threading.Event()
    real = service.api.window_from_request

    def stuck(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(service.api, "window_from_request", stuck)
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    app = create_app(settings, group_start_id="0")
    result: dict[str, Any] = {}
    with TestClient(app) as client:

        def post() -> None:
            body = window_body(spec, T0 + 400.0)
            result["r"] = client.post("/v1/furnaces/h1/windows", json=body, headers=WRITE)

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        try:
            assert entered.wait(30), "the HTTP request never reached decoding"
            start = T0
            publish_synthetic(
                redis_client, key_prefix, "s1", spec, start, spec.lookback_seconds + 30
            )
            wait_for(
                "stream detections while the HTTP request is stuck",
                lambda: len(window_ends(redis_client, key_prefix, "s1")) >= 3,
                timeout=60,
            )
            assert client.get("/readyz").status_code == 200
            assert not result, "the HTTP request finished; it was meant to stay stuck"
        finally:
            release.set()
            poster.join(60)
    assert result["r"].status_code == 200, result["r"].text


@contextmanager
def real_server(settings: Settings) -> Iterator[tuple[str, int]]:
    """`furnace serve`'s server (service.server.server_config) on a free loopback port."""
    settings = settings.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    with run_server(server_config(create_app(settings), settings, log_level="warning")):
        yield settings.host, settings.port


@contextmanager
def idle_sockets(host: str, port: int, n: int) -> Iterator[list[socket.socket]]:
    """`n` connections that never send a byte; closed on exit."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection((host, port), timeout=5))
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


@pytest.mark.fault(
    "slowloris: 300 idle TCP connections without a key, none sending a request",
    expected="/readyz and the API keep answering 200 (requests, not connections, are "
    "limited); the idle sockets are closed after FURNACE_HTTP_HEADER_TIMEOUT_SECONDS",
)
def test_idle_connections_do_not_turn_the_server_into_503(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(
        redis_url,
        key_prefix,
        bundle_dir,
        ingest=False,
        http_concurrency=256,
        http_header_timeout_seconds=3.0,
    )
    with real_server(settings) as (host, port), idle_sockets(host, port, 300) as socks:
        time.sleep(0.5)  # every connection accepted
        for _ in range(3):
            r = httpx.get(f"http://{host}:{port}/readyz", timeout=10)
            assert r.status_code == 200, r.text
            assert httpx.get(f"http://{host}:{port}/v1/model", timeout=10).status_code == 200
        assert all(_closed_by_server(s, 10.0) for s in socks[:10])


@pytest.mark.fault(
    "slowloris: a request head trickled one byte every 0.2 s",
    expected="the connection is closed at the header deadline (not an idle timer)",
)
def test_a_trickled_request_head_is_cut_at_the_deadline(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(
        redis_url, key_prefix, bundle_dir, ingest=False, http_header_timeout_seconds=1.5
    )
    with real_server(settings) as (host, port):
        s = socket.create_connection((host, port), timeout=5)
        head = b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
        t0 = time.monotonic()
        closed = False
        try:
            for byte in head:
                s.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - t0 > 6:
                    break
        except OSError:
            closed = True
        closed = closed or _closed_by_server(s, 2.0)
        s.close()
        assert closed
        assert time.monotonic() - t0 < 6.5


@pytest.mark.fault(
    "more idle connections than FURNACE_HTTP_MAX_CONNECTIONS",
    expected="a new connection evicts the longest idle one, so probes still get through",
)
def test_the_connection_cap_evicts_idle_connections(
    redis_url: str, key_prefix: str, bundle_dir: Path
) -> None:
    settings = make_settings(
        redis_url,
        key_prefix,
        bundle_dir,
        ingest=False,
        http_max_connections=20,
        http_header_timeout_seconds=60.0,
    )
    with real_server(settings) as (host, port), idle_sockets(host, port, 40) as socks:
        time.sleep(0.3)
        r = httpx.get(f"http://{host}:{port}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert _closed_by_server(socks[0], 5.0)  # the oldest idle one went first


@pytest.mark.fault(
    "POST /v1/admin/reload of a bundle whose graph was changed and re-hashed into its manifest",
    expected="422: the signature no longer matches; the old model keeps serving",
)
def test_a_rehashed_bundle_is_not_reloaded(
    redis_url: str, key_prefix: str, bundle_dir: Path, manifest: Manifest, tmp_path: Path
) -> None:
    from training.export.bundle import sha256_file

    root = tmp_path / "models"
    shutil.copytree(bundle_dir, root / "good")
    shutil.copytree(bundle_dir, root / "evil")
    graph = root / "evil" / "current.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    path = root / "evil" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["files"]["current.onnx"] = sha256_file(graph)
    path.write_text(json.dumps(raw, indent=2))
    settings = make_settings(redis_url, key_prefix, "good", models_dir=root, ingest=False)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/admin/reload", json={"bundle": "evil"}, headers=ADMIN)
        assert response.status_code == 422, response.text
        assert "signature" in response.text
        assert client.get("/v1/model").json()["model_version"] == manifest.model_version


@pytest.mark.fault(
    "the service started on an unsigned bundle",
    expected="it refuses to start unless FURNACE_ALLOW_UNSIGNED_BUNDLES=true",
)
def test_an_unsigned_bundle_does_not_start_the_service(
    redis_url: str, key_prefix: str, bundle_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "unsigned"
    shutil.copytree(bundle_dir, folder)
    (folder / "signature.json").unlink()
    settings = make_settings(redis_url, key_prefix, folder, ingest=False)
    with pytest.raises(RuntimeError, match="unsigned bundle"), TestClient(create_app(settings)):
        pass
    allowed = settings.model_copy(update={"allow_unsigned_bundles": True})
    with TestClient(create_app(allowed)) as client:
        assert client.get("/readyz").status_code == 200
