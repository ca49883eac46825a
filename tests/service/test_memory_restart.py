"""Memory heads across restarts, against the real Redis (docs/service.md "Memory"): a furnace's
code history is rebuilt from its stored detections (only the engine's model version, only
what the slots reach), so a service restarted halfway through a furnace's stream, or a fresh
replica scoring a posted window, decides as an uninterrupted one; a failed rebuild is logged
and scoring goes on with an empty history."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from service.engine import Engine
from service.images import encode_png
from service.main import create_app
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings
from service.store import Keys, recent_codes
from service.types import MODALITIES, WindowSpec
from tests.helpers.memory import http_body, synthetic_windows, varied_frame
from tests.helpers.service import (
    T0,
    WRITE,
    detections,
    hop_grid,
    make_settings,
    wait_for,
    window_ends,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def engine(memory_bundle: Path) -> Engine:
    return Engine(memory_bundle)


def level(ts: float) -> float:
    """A current level that wanders over minutes (varied current codes)."""
    return 12000.0 + 2500.0 * math.sin((ts - T0) / 23.0) + 1500.0 * math.sin((ts - T0) / 7.0)


def stream_entries(spec: WindowSpec, seconds: float, seed: int) -> list[tuple[float, str, dict]]:
    """(ts, modality, fields) of both streams over `seconds`, in sensor-time order."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, str, dict]] = []
    for k in range(round(seconds * spec.rate_hz)):
        ts = T0 + k / spec.rate_hz
        a, b, c = (level(ts) + 150.0 * rng.standard_normal(3)).round(2).tolist()
        out.append((ts, "current", {"ts": f"{ts:.3f}", "a": f"{a}", "b": f"{b}", "c": f"{c}"}))
    for k in range(round(seconds * spec.camera_fps)):
        ts = T0 + k / spec.camera_fps
        png = encode_png(varied_frame(rng, spec.frame_px))
        out.append((ts, "camera", {"ts": f"{ts:.3f}", "image": png}))
    return sorted(out, key=lambda e: (e[0], e[1] != "current"))


def publish(
    client: redis.Redis, prefix: str, furnace_id: str, entries: list[tuple[float, str, dict]]
) -> None:
    pipe = client.pipeline(transaction=True)  # both streams at once for a blocked reader
    for _, modality, fields in entries:
        pipe.xadd(f"{prefix}furnace:{furnace_id}:{modality}", fields)
    pipe.execute()


def closed_ends(spec: WindowSpec, settings: Settings, newest: float) -> list[float]:
    """Every window end the entries up to `newest` close (the first full window on)."""
    first = math.ceil((T0 + spec.window_seconds - 1.0 / spec.rate_hz) / spec.hop_seconds - 1e-9)
    last = math.floor((newest - settings.grace_seconds) / spec.hop_seconds + 1e-9)
    return hop_grid(spec, first * spec.hop_seconds, last * spec.hop_seconds)


def run_until(settings: Settings, client: redis.Redis, furnace_id: str, ends: list[float]) -> None:
    """Run a service until the furnace's detections hold every end in `ends`, then stop it."""
    prefix = settings.key_prefix
    with TestClient(create_app(settings, group_start_id="0")):
        wait_for(
            f"{furnace_id}'s detections up to {ends[-1] - T0:g} s",
            lambda: set(ends) <= set(window_ends(client, prefix, furnace_id)),
            120.0,
        )


def slots_from(
    engine: Engine, dets: list[dict[str, Any]], k: int, modality: str, after: float = -math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """The memory inputs of detection `k` built from the stored detections (slot j: the
    detection whose end is j strides earlier, where it has codes of `modality`), leaving out
    windows ending at or before `after`."""
    memory = engine.manifest.memory
    assert memory is not None
    by_key = {round(d["window_end"] / memory.hop_seconds): d for d in dets}
    key = round(dets[k]["window_end"] / memory.hop_seconds)
    codes = np.zeros((1, memory.slots, memory.codes_per_window), np.int64)
    present = np.zeros((1, memory.slots), np.float32)
    for j in range(memory.slots):
        d = by_key.get(key - j * memory.stride_windows)
        if d is None or modality not in d["codes"] or (j > 0 and d["window_end"] <= after):
            continue
        codes[0, j], present[0, j] = d["codes"][modality], 1.0
    return codes, present


def test_a_restarted_service_rebuilds_the_history_and_decides_as_an_uninterrupted_one(
    engine: Engine,
    memory_bundle: Path,
    redis_client: redis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    """One furnace's streams, 7 minutes: an uninterrupted service under one prefix; under
    another the service is stopped after 3.5 minutes, the rest is published while it is down,
    and a new service (a new engine, empty history) picks up. Every detection after the
    restart equals the uninterrupted one; the stored probabilities are the memory graph's
    over slots built from the stored detections, and leaving out the windows from before the
    restart would have changed them (the rebuilt history was used)."""
    spec = engine.manifest.window
    memory = engine.manifest.memory
    assert memory is not None
    seconds, cut = 420.0, 210.0
    entries = stream_entries(spec, seconds, seed=8)
    first_half = [e for e in entries if e[0] < T0 + cut]
    straight, restarted = f"{key_prefix}a:", f"{key_prefix}b:"
    fid = "m1"
    newest = max(e[0] for e in entries)
    settings = {p: make_settings(redis_url, p, memory_bundle) for p in (straight, restarted)}
    ends = closed_ends(spec, settings[straight], newest)

    publish(redis_client, straight, fid, entries)
    run_until(settings[straight], redis_client, fid, ends)

    publish(redis_client, restarted, fid, first_half)
    cut_ends = closed_ends(spec, settings[restarted], max(e[0] for e in first_half))
    run_until(settings[restarted], redis_client, fid, cut_ends)
    publish(redis_client, restarted, fid, [e for e in entries if e[0] >= T0 + cut])
    run_until(settings[restarted], redis_client, fid, ends)

    a = detections(redis_client, straight, fid)
    b = detections(redis_client, restarted, fid)
    assert [d["window_end"] for d in a] == [d["window_end"] for d in b] == ends
    for x, y in zip(a, b, strict=True):
        assert x["codes"] == y["codes"], x["window_end"]
        assert x["condition"] == y["condition"] and x["is_abnormal"] == y["is_abnormal"]
        for m in x["per_modality"]:
            px, py = x["per_modality"][m], y["per_modality"][m]
            assert py["window_score"] == pytest.approx(px["window_score"], abs=1e-6)
            assert py["score"] == pytest.approx(px["score"], abs=1e-6), (x["window_end"], m)
            for name, p in px["probabilities"].items():
                assert py["probabilities"][name] == pytest.approx(p, abs=1e-6)

    last_before = cut_ends[-1]
    reach = (memory.slots - 1) * memory.stride_windows * memory.hop_seconds
    changed = 0
    for k, d in enumerate(b):
        for m in d["per_modality"]:
            codes, present = slots_from(engine, b, k, m)
            stored = list(d["per_modality"][m]["probabilities"].values())
            own = np.asarray([list(d["per_modality"][m]["window_probabilities"].values())])
            own = own.astype(np.float32)
            out = engine.run_memory(m, codes, present, own)["probs"][0]
            assert np.allclose(out, stored, atol=1e-5)
            if last_before < d["window_end"] <= last_before + reach:
                codes, present = slots_from(engine, b, k, m, after=last_before)
                alone = engine.run_memory(m, codes, present, own)["probs"][0]
                changed += not np.allclose(alone, stored, atol=1e-4)
    assert changed > 10  # windows after the restart read windows from before it


def test_a_fresh_replica_scores_a_posted_window_with_the_stored_history(
    engine: Engine, memory_bundle: Path, redis_url: str, key_prefix: str
) -> None:
    """Windows posted to one service, then the last one posted again to a new service (new
    engine): its memory reads the history rebuilt from the stored detections and gives the
    same probabilities; under a prefix without detections it reads nothing and differs.
    GET /v1/model shows the memory section."""
    memory = engine.manifest.memory
    assert memory is not None
    spec = engine.manifest.window
    step = memory.stride_windows * memory.hop_seconds
    ends = [T0 + 1000.0 + k * step for k in range(6)]
    bodies = [http_body(spec, end, seed=k) for k, end in enumerate(ends)]
    settings = make_settings(redis_url, key_prefix, memory_bundle, ingest=False)

    with TestClient(create_app(settings)) as client:
        first = []
        for body in bodies:
            response = client.post("/v1/furnaces/h1/windows", json=body, headers=WRITE)
            assert response.status_code == 200, response.text
            first.append(response.json())
        info = client.get("/v1/model").json()
    assert info["memory"]["slots"] == memory.slots
    assert info["memory"]["stride_windows"] == memory.stride_windows
    assert info["memory"]["graphs"]["current"]["file"] == memory.graphs["current"].file
    assert "/" not in json.dumps(info["memory"]).replace("tensor(", "")  # no paths
    assert all(r["state_applied"] for r in first)

    with TestClient(create_app(settings)) as client:
        again = client.post("/v1/furnaces/h1/windows", json=bodies[-1], headers=WRITE).json()
    other = make_settings(redis_url, f"{key_prefix}x:", memory_bundle, ingest=False)
    with TestClient(create_app(other)) as client:
        empty = client.post("/v1/furnaces/h1/windows", json=bodies[-1], headers=WRITE).json()

    assert again["state_applied"] is False  # already committed: scored, not applied
    differs = 0
    for m in MODALITIES:
        want = first[-1]["per_modality"][m]
        assert again["per_modality"][m]["codes"] == want["codes"]
        for name, p in want["probabilities"].items():
            assert again["per_modality"][m]["probabilities"][name] == pytest.approx(p, abs=1e-6)
        alone = empty["per_modality"][m]
        assert alone["window_score"] == pytest.approx(want["window_score"], abs=1e-6)
        differs += not np.allclose(
            list(alone["probabilities"].values()), list(want["probabilities"].values()), atol=1e-4
        )
    assert differs > 0


def test_the_stored_history_read_is_bounded_and_filtered(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    """`recent_codes`: only detections of the given model version, only window ends within
    the span of the newest one, oldest first, entries without usable codes skipped, and at
    most `max_entries` read (newest first)."""
    key = f"{key_prefix}furnace:r1:detections"

    def add(end: float, version: str, codes: Any, raw: str | None = None) -> None:
        data = raw if raw is not None else json.dumps({"window_end": end, "codes": codes})
        fields = {"window_end": repr(end), "model_version": version, "data": data}
        redis_client.xadd(key, fields)  # type: ignore[arg-type]

    for k in range(100):  # a window every 2 s
        add(T0 + 2.0 * k, "v1", {"current": [k, 1], "camera": [k, 2]})
    add(T0 + 500.0, "v0", {"current": [9, 9]})  # an older model's, newer window
    add(T0 + 2.0 * 100, "v1", None, raw="{not json")
    add(T0 + 2.0 * 101, "v1", {"current": ["x"]})
    add(T0 + 2.0 * 50, "v1", {"camera": [50, 3]})  # a backfill entry, appended late

    async def read(**kw: Any) -> list[tuple[float, dict[str, list[int]]]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await recent_codes(client, Keys(key_prefix), "r1", model_version="v1", **kw)
        finally:
            await client.aclose()

    got = asyncio.run(read(seconds=40.0, max_entries=1000))
    assert [end - T0 for end, _ in got] == [2.0 * k for k in range(79, 100)]  # the last 40 s
    assert got[-1][1] == {"current": [99, 1], "camera": [99, 2]}
    got = asyncio.run(read(seconds=1000.0, max_entries=1000))
    assert len(got) == 101 and got[-1] == (T0 + 100.0, {"camera": [50, 3]})  # stream order
    got = asyncio.run(read(seconds=1000.0, max_entries=30))
    assert len(got) == 27  # the newest 30 entries: 3 unusable or another version's
    assert got[0][0] == T0 + 2.0 * 74
    redis_client.delete(key)
    assert asyncio.run(read(seconds=1000.0, max_entries=30)) == []


def test_a_failed_rebuild_is_logged_and_scoring_goes_on(
    memory_bundle: Path, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable when a furnace's history is to be rebuilt: a warning, the window is
    scored with the history the engine holds (none), and the furnace is not read again."""
    settings = make_settings(redis_url, key_prefix, memory_bundle)
    rt = Runtime(settings=settings, metrics=Metrics(), executor=ThreadPoolExecutor(1))
    rt.engine = Engine(memory_bundle)
    assert rt.engine.history is not None
    rt.client = aioredis.Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=1.0)
    spec = rt.engine.manifest.window
    windows = synthetic_windows(spec, "down", [T0, T0 + 16.0], seed=9)

    async def score() -> None:
        try:
            dets = await rt.score(windows)
            assert [d.window_end for d in dets] == [T0, T0 + 16.0]
            assert all(d.per_modality["camera"].window_score is not None for d in dets)
        finally:
            await rt.client.aclose()  # type: ignore[union-attr]

    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        asyncio.run(score())
    assert any("memory history of down not rebuilt" in r.message for r in caplog.records)
    assert rt.engine.history.primed("down")
    assert rt.engine.history.furnaces() == 1
    rt.executor.shutdown()
