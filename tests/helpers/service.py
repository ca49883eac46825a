"""Helpers for the service tests: the bundle they serve, settings, window bodies, polling,
streams, and a real uvicorn server on a loopback port (fixtures: tests/service/conftest.py)."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import uvicorn
from fastapi import FastAPI

from service.bundle import BundleError, verify_bundle
from service.images import encode_png
from service.settings import Settings
from service.types import WindowSpec

REPO = Path(__file__).resolve().parents[2]


DEFAULT_BUNDLE = REPO / "models" / "default"
DEV_PUBLIC_KEY = REPO / "keys" / "dev-bundle.pub"  # models/default is signed with its key
DEV_SIGNING_KEY = REPO / "keys" / "dev-bundle.key"


WRITE_KEY = "k1"


ADMIN_KEY = "adm"


WRITE = {"X-API-Key": WRITE_KEY}  # headers of write and admin requests


ADMIN = {"X-API-Key": ADMIN_KEY}


T0 = 1_700_000_000.0  # sensor time of a replay's t_sim = 0 (a multiple of every hop used)


def resolve_bundle(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """FURNACE_TEST_BUNDLE, else models/default when its manifest exists, else the tiny
    trained bundle (`tiny_bundle`, about a minute to train on 2 cores).

    models/default is copied first (and the copy verified), so a re-export running beside
    the tests cannot swap files under a running app; a copy caught mid-export is retried."""
    override = os.environ.get("FURNACE_TEST_BUNDLE")
    if override:
        return Path(override)
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return _stable_copy(DEFAULT_BUNDLE, tmp_path_factory.mktemp("bundle"))
    tiny: Path = request.getfixturevalue("tiny_bundle")
    return tiny


def resolve_memory_bundle(request: pytest.FixtureRequest, bundle_dir: Path) -> Path:
    """FURNACE_TEST_MEMORY_BUNDLE, else `bundle_dir` when its manifest has a `memory` section
    (a copy with role "decide" when its role is "name", as models/default's), else the tiny
    bundle with memory heads (`tiny_memory_bundle`)."""
    override = os.environ.get("FURNACE_TEST_MEMORY_BUNDLE")
    if override:
        return Path(override)
    memory = json.loads((bundle_dir / "manifest.json").read_text()).get("memory")
    if memory is None:
        tiny: Path = request.getfixturevalue("tiny_memory_bundle")
        return tiny
    if memory.get("role", "decide") == "decide":
        return bundle_dir
    # models/default names with its memory heads (role "name"); the memory tests read the
    # role that decides too: the same graphs with the role changed, re-signed
    root: Path = request.getfixturevalue("tmp_path_factory").mktemp("memory-decide")
    dest = root / bundle_dir.name
    shutil.copytree(bundle_dir, dest)
    raw = json.loads((dest / "manifest.json").read_text())
    raw["memory"]["role"] = "decide"
    (dest / "manifest.json").write_text(json.dumps(raw, indent=2))
    dev_sign(dest)
    return dest


def _stable_copy(bundle: Path, root: Path, attempts: int = 20) -> Path:
    error: BundleError | None = None
    for attempt in range(attempts):
        dest = root / f"{bundle.name}-{attempt}"
        try:
            shutil.copytree(bundle, dest)
            verify_bundle(dest)
            return dest
        except (BundleError, OSError) as exc:  # a file replaced while we copied it
            error = exc if isinstance(exc, BundleError) else BundleError(str(exc))
            time.sleep(3.0)
    pytest.fail(f"{bundle} does not verify: {error}", pytrace=False)


def make_settings(redis_url: str, prefix: str, bundle: Path | str, **overrides: Any) -> Settings:
    """Test settings: real Redis under `prefix`, keys k1/adm, fast loops, never exit."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "bundle": str(bundle),
        "api_keys": [WRITE_KEY],
        "admin_keys": [ADMIN_KEY],
        "exit_on_consumer_failure": False,
        "block_ms": 200,
        "discovery_interval_seconds": 0.2,
        "claim_interval_seconds": 0.5,
        "inference_workers": 1,
        "trusted_keys_file": DEV_PUBLIC_KEY,
    }
    values.update(overrides)
    return Settings(**values)


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(every)


def png_b64(frame: np.ndarray) -> str:
    return base64.b64encode(encode_png(frame)).decode("ascii")


def noise_frames(n: int, px: int, seed: int = 0) -> list[np.ndarray]:
    """Frames of sensor-like noise: never dark, frozen or occluded (health "ok")."""
    rng = np.random.default_rng(seed)
    return [rng.integers(40, 220, (px, px, 3), dtype=np.uint8) for _ in range(n)]


def current_samples(n: int, seed: int = 0, level: float = 12000.0) -> list[list[float]]:
    """`n` three-phase samples around `level` A with noise (no repeats, no clipping)."""
    rng = np.random.default_rng(seed)
    x = level + 150.0 * rng.standard_normal((n, 3))
    return np.round(x, 2).tolist()  # type: ignore[no-any-return]


def window_body(
    spec: WindowSpec,
    end: float,
    *,
    current: bool = True,
    camera: bool = True,
    history: bool = True,
    seed: int = 0,
    baseline_a: list[float] | None = None,
) -> dict[str, Any]:
    """A POST body for the window ending at `end`: current (window + baseline history, or the
    window alone) and one frame every 1/camera_fps over the window (covers every segment end)."""
    body: dict[str, Any] = {"window_end": end}
    if current:
        n = spec.samples + (round(spec.baseline_seconds * spec.rate_hz) if history else 0)
        part: dict[str, Any] = {
            "start": end - (n - 1) / spec.rate_hz,
            "rate_hz": spec.rate_hz,
            "samples": current_samples(n, seed),
        }
        if baseline_a is not None:
            part["baseline_a"] = baseline_a
        body["current"] = part
    if camera:
        step = 1.0 / spec.camera_fps
        count = round(spec.window_seconds * spec.camera_fps)
        times = [end - spec.window_seconds + (k + 1) * step for k in range(count)]
        frames = noise_frames(count, spec.frame_px, seed)
        body["camera"] = {
            "frames": [{"ts": t, "image": png_b64(f)} for t, f in zip(times, frames, strict=True)]
        }
    return body


def publish_synthetic(
    client: redis.Redis,
    prefix: str,
    furnace_id: str,
    spec: WindowSpec,
    start: float,
    seconds: float,
    *,
    seed: int = 0,
    nan_at: tuple[float, ...] = (),
    modalities: tuple[str, ...] = ("current", "camera"),
    atomic: bool = False,
) -> None:
    """Clean 2 Hz current and one noise frame every 1/camera_fps from `start` for `seconds`
    (the streams in `modalities` only); samples at the `nan_at` times carry NaN phases (sensor
    health, not poison). `atomic`: in one MULTI, so a blocked reader sees both streams together
    (published one after the other, the frames would come after the current closed their
    windows: late)."""
    rng = np.random.default_rng(seed)
    pipe = client.pipeline(transaction=atomic)
    if "current" in modalities:
        for k in range(round(seconds * spec.rate_hz)):
            ts = start + k / spec.rate_hz
            a, b, c = (12000 + 150 * rng.standard_normal(3)).round(2).tolist()
            if any(abs(ts - t) < 1e-6 for t in nan_at):
                a = b = c = math.nan
            fields = {"ts": f"{ts:.3f}", "a": f"{a}", "b": f"{b}", "c": f"{c}"}
            pipe.xadd(f"{prefix}furnace:{furnace_id}:current", fields)  # type: ignore[arg-type]
    if "camera" in modalities:
        frames = noise_frames(round(seconds * spec.camera_fps), spec.frame_px, seed)
        for k, frame in enumerate(frames):
            ts = start + k / spec.camera_fps
            fields = {"ts": f"{ts:.3f}", "image": encode_png(frame)}
            pipe.xadd(f"{prefix}furnace:{furnace_id}:camera", fields)  # type: ignore[arg-type]
    pipe.execute()


def stream_fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in fields.items()}


def dead_letters(client: redis.Redis, prefix: str) -> list[dict[str, str]]:
    """The `dlq` stream's entries under `prefix`, oldest first, as text."""
    rows = client.xrange(f"{prefix}dlq")
    return [stream_fields(fields) for _, fields in rows]  # type: ignore[union-attr]


def detections(client: redis.Redis, prefix: str, furnace_id: str) -> list[dict[str, Any]]:
    """Every detection of a furnace, oldest first, as the JSON records the service wrote."""
    rows = client.xrange(f"{prefix}furnace:{furnace_id}:detections")
    return [json.loads(fields[b"data"]) for _, fields in rows]  # type: ignore[union-attr]


def window_ends(client: redis.Redis, prefix: str, furnace_id: str) -> list[float]:
    return [d["window_end"] for d in detections(client, prefix, furnace_id)]


def hop_grid(spec: WindowSpec, first: float, last: float) -> list[float]:
    """Window ends on the hop grid from `first` to `last` inclusive."""
    k0, k1 = round(first / spec.hop_seconds), round(last / spec.hop_seconds)
    return [k * spec.hop_seconds for k in range(k0, k1 + 1)]


def tampered_copy(bundle: Path, dest: Path, name: str = "current.onnx") -> Path:
    """A copy of `bundle` with one byte of `name` flipped (its sha256 no longer matches)."""
    shutil.copytree(bundle, dest)
    path = dest / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return dest


def with_thresholds(bundle: Path, dest: Path, value: float) -> Path:
    """A copy of `bundle` whose three thresholds are `value` (the manifest's own sha256 is not
    in its `files`, so the copy verifies): 0.0 flags every window, 1.0 none."""
    shutil.copytree(bundle, dest)
    path = dest / "manifest.json"
    raw = json.loads(path.read_text())
    for name in ("current", "camera", "fused"):
        raw["thresholds"][name] = value
    path.write_text(json.dumps(raw, indent=2))
    dev_sign(dest)  # re-signed: the service refuses a manifest changed after signing
    return dest


def dev_sign(bundle: Path) -> None:
    """Sign `bundle` with the repository's development key (what the test settings trust)."""
    from training.export.signing import load_signing_key, sign_manifest

    sign_manifest(bundle, load_signing_key(DEV_SIGNING_KEY))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def run_server(config: uvicorn.Config, *, startup_timeout: float = 60.0) -> Iterator[str]:
    """Run the uvicorn `config` in a thread (lifespan included); yields the base URL and shuts
    the server down on exit."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(
            "uvicorn to start",
            lambda: server.started or not thread.is_alive(),
            startup_timeout,
        )
        if not server.started:
            pytest.fail("uvicorn did not start (see the log above)", pytrace=False)
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_app(app: FastAPI, *, startup_timeout: float = 60.0) -> AbstractContextManager[str]:
    """Serve `app` with a plain uvicorn config on a free loopback port (`run_server`)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on"
    )
    return run_server(config, startup_timeout=startup_timeout)
