"""Hostile stream input against the real consumer and a real Redis (issue 14: 1, 2, 7, 9):
a sensor clock in the future, late entries and backfill, a deleted stream (NOGROUP), and a
Redis that comes back empty. Each test fails without its fix (see the `fault` marks).
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from service.store import GROUP
from service.types import WindowSpec
from tests.helpers.service import (
    T0,
    WRITE,
    dead_letters,
    detections,
    hop_grid,
    make_settings,
    publish_synthetic,
    wait_for,
    window_body,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


# Both modalities in one MULTI: a blocked reader sees them together (published one stream after
# the other, the frames would arrive after the current closed their windows: late).
publish = partial(publish_synthetic, atomic=True)


def app_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, group_start_id="0"))


def live_ends(client: redis.Redis, prefix: str, furnace_id: str) -> set[float]:
    return {d["window_end"] for d in detections(client, prefix, furnace_id) if "source" not in d}


def wait_for_ends(
    client: redis.Redis, prefix: str, furnace_id: str, ends: list[float], timeout: float = 45.0
) -> None:
    wanted = set(ends)
    wait_for(
        f"detections of {furnace_id} up to {max(ends)}",
        lambda: wanted <= live_ends(client, prefix, furnace_id),
        timeout,
    )


def grid(spec: WindowSpec, start: float, first_s: float, last_ts: float) -> list[float]:
    """Window ends from the first one whose data starts at `start + first_s` to the last one
    that data up to `last_ts` closes (end + grace <= newest)."""
    first = math.ceil((start + first_s + spec.window_seconds - 0.5) / spec.hop_seconds)
    last = math.floor((last_ts - 1.0) / spec.hop_seconds)
    return hop_grid(spec, first * spec.hop_seconds, last * spec.hop_seconds)


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# ----------------------------------------------------------------- 1: sensor time in the future


@pytest.mark.fault(
    "one stream entry one day in the future (XADD furnace:F:current * ts <now+86400> ...)",
    expected="dead-lettered with reason 'future'; the furnace's clock does not move and later "
    "data is scored as before",
)
def test_an_entry_from_the_future_is_dead_lettered_and_moves_no_clock(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    hop = spec.hop_seconds
    start = math.floor((time.time() - 120.0) / hop) * hop  # live data, just behind the clock
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    cur = f"{key_prefix}furnace:fu1:current"
    with app_client(settings) as client:
        publish(redis_client, key_prefix, "fu1", spec, start, 40.0)
        wait_for_ends(redis_client, key_prefix, "fu1", grid(spec, start, 0.0, start + 39.5))
        future = time.time() + 86_400.0
        bad = redis_client.xadd(cur, {"ts": f"{future:.3f}", "a": "1", "b": "1", "c": "1"})
        publish(redis_client, key_prefix, "fu1", spec, start + 40.0, 40.0, seed=1)
        wait_for_ends(redis_client, key_prefix, "fu1", grid(spec, start, 0.0, start + 79.5))
        assert client.get("/readyz").json()["ready"] is True
        metrics = client.get("/metrics").text
    letters = dead_letters(redis_client, key_prefix)
    assert [(d["id"], d["reason"]) for d in letters] == [(bad.decode(), "future")]
    assert "FURNACE_MAX_FUTURE_SKEW_SECONDS" in letters[0]["detail"]
    assert metric(metrics, "furnace_dead_letters_total", reason="future") == 1.0
    assert max(live_ends(redis_client, key_prefix, "fu1")) < time.time()


@pytest.mark.fault(
    "a POSTed window whose current starts 29 days in the future",
    expected="422 naming the field and FURNACE_MAX_FUTURE_SKEW_SECONDS; no state is written",
)
def test_a_posted_window_from_the_future_is_422(
    key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    settings = make_settings(redis_url, key_prefix, bundle_dir, ingest=False)
    end = math.floor((time.time() + 29 * 86_400.0) / spec.hop_seconds) * spec.hop_seconds
    with app_client(settings) as client:
        response = client.post(
            "/v1/furnaces/fu2/windows", json=window_body(spec, end), headers=WRITE
        )
        assert response.status_code == 422, response.text
        assert "future" in response.text and "FURNACE_MAX_FUTURE_SKEW_SECONDS" in response.text
        assert client.get("/v1/furnaces/fu2/state").status_code == 404
        # A window a few seconds ahead (sensor clock skew) is still accepted.
        near = math.floor((time.time() + 5.0) / spec.hop_seconds) * spec.hop_seconds
        response = client.post(
            "/v1/furnaces/fu2/windows", json=window_body(spec, near), headers=WRITE
        )
        assert response.status_code == 200, response.text


# ----------------------------------------------------------------- 2: late entries, backfill


@pytest.mark.fault(
    "entries arriving after their windows closed (a gateway flushing old data)",
    expected="counted in furnace_entries_late_total, dead-lettered with reason 'late', logged",
)
def test_late_entries_are_counted_and_dead_lettered(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start = T0 + 3600.0
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    cur = f"{key_prefix}furnace:la1:current"
    with app_client(settings) as client:
        publish(redis_client, key_prefix, "la1", spec, start, 40.0)
        wait_for_ends(redis_client, key_prefix, "la1", grid(spec, start, 0.0, start + 39.5))
        late = [
            redis_client.xadd(cur, {"ts": f"{start + 5.25 + k:.3f}", "a": 1, "b": 1, "c": 1})
            for k in range(4)
        ]
        wait_for("4 dead letters", lambda: len(dead_letters(redis_client, key_prefix)) == 4, 20)
        metrics = client.get("/metrics").text
    letters = dead_letters(redis_client, key_prefix)
    assert {d["id"] for d in letters} == {i.decode() for i in late}
    assert {d["reason"] for d in letters} == {"late"}
    assert all(d["source"] == cur and "closed window" in d["detail"] for d in letters)
    assert metric(metrics, "furnace_entries_late_total", modality="current") == 4.0
    assert metric(metrics, "furnace_dead_letters_total", reason="late") == 4.0


@pytest.mark.fault(
    "a gateway flushes 200 s of current after the camera closed those windows alone",
    expected="with FURNACE_BACKFILL_FURNACES the late current is scored in order as backfill "
    "detections (source=backfill, once per window end); nothing is dead-lettered",
)
def test_backfill_mode_scores_late_entries_in_order(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start, seconds = T0 + 7200.0, 200.0
    settings = make_settings(redis_url, key_prefix, bundle_dir, backfill_furnaces=["bf1"])
    with app_client(settings) as client:
        publish(redis_client, key_prefix, "bf1", spec, start, seconds, modalities=("camera",))
        live = grid(spec, start, 0.0, start + seconds - 0.5)
        wait_for_ends(redis_client, key_prefix, "bf1", live)
        publish(redis_client, key_prefix, "bf1", spec, start, seconds, modalities=("current",))
        newest_late = live[-1]  # current up to the last closed window end is late
        expected = grid(spec, start, 0.0, newest_late + 1.0)

        def backfilled() -> list[dict[str, Any]]:
            dets = detections(redis_client, key_prefix, "bf1")
            return [d for d in dets if d.get("source") == "backfill"]

        wait_for(
            "the backfill", lambda: {d["window_end"] for d in backfilled()} >= set(expected), 45
        )
        metrics = client.get("/metrics").text
    got = backfilled()
    assert [d["window_end"] for d in got] == expected  # in order, each end once
    ok_from = start + spec.baseline_seconds + spec.window_seconds
    for d in got:
        assert "camera" not in d["modalities"]
        if d["window_end"] >= ok_from:
            assert d["health"]["current"] == "ok" and d["decided_by"] == "current", d
    assert dead_letters(redis_client, key_prefix) == []
    assert metric(metrics, "furnace_entries_late_total", reason="backfill") > 0
    assert metric(metrics, "furnace_windows_scored_total", source="backfill") == len(expected)
    rows = redis_client.xrange(f"{key_prefix}furnace:bf1:detections")
    assert sum(1 for _, f in rows if f.get(b"source") == b"backfill") == len(expected)


# ----------------------------------------------------------------- 7: a deleted stream


@pytest.mark.fault(
    "DEL furnace:X:camera while the replica reads it (XREADGROUP answers NOGROUP)",
    expected="the group is recreated (MKSTREAM) and reading goes on; every other furnace "
    "keeps being scored, and so does X",
)
def test_a_deleted_stream_gets_its_group_back_and_the_others_flow_on(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start = T0 + 9000.0
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    with app_client(settings) as client:
        for furnace_id in ("ng1", "ng2"):
            publish(redis_client, key_prefix, furnace_id, spec, start, 40.0)
        for furnace_id in ("ng1", "ng2"):
            wait_for_ends(redis_client, key_prefix, furnace_id, grid(spec, start, 0, start + 39.5))
        assert redis_client.delete(f"{key_prefix}furnace:ng1:camera") == 1
        publish(redis_client, key_prefix, "ng2", spec, start + 40.0, 40.0, seed=1)
        wait_for_ends(redis_client, key_prefix, "ng2", grid(spec, start, 0, start + 79.5))
        publish(redis_client, key_prefix, "ng1", spec, start + 40.0, 40.0, seed=1)
        wait_for_ends(redis_client, key_prefix, "ng1", grid(spec, start, 0, start + 79.5))
        wait_for("ready", lambda: client.get("/readyz").json()["ready"], 10)
    groups = redis_client.xinfo_groups(f"{key_prefix}furnace:ng1:camera")
    assert [g["name"] for g in groups] == [GROUP.encode()]
    after = start + 40.0 + spec.window_seconds  # windows of frames from the new stream only
    dets = [d for d in detections(redis_client, key_prefix, "ng1") if d["window_end"] >= after]
    assert dets and all(d["health"]["camera"] == "ok" for d in dets)


# ----------------------------------------------------------------- 9: Redis comes back empty


@pytest.mark.fault(
    "Redis loses every key (FLUSHALL, a restart without persistence) while replicas run",
    expected="shard:layout is written again at the next lease renewal (and the lease retaken)",
)
def test_the_shard_layout_is_rewritten_after_redis_comes_back_empty(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str
) -> None:
    settings = make_settings(redis_url, key_prefix, bundle_dir, lease_ttl_ms=1500)
    layout = f"{key_prefix}shard:layout"
    with app_client(settings) as client:
        wait_for("the layout", lambda: redis_client.get(layout) == b"1", 10)
        wait_for("ready", lambda: client.get("/readyz").json()["ready"], 20)
        keys = list(redis_client.scan_iter(match=f"{key_prefix}*"))
        redis_client.delete(*keys)  # everything under this deployment's prefix: "empty"
        wait_for("the layout rewritten", lambda: redis_client.get(layout) == b"1", 10)
        wait_for("the lease retaken", lambda: redis_client.get(f"{key_prefix}shard:0-of-1"), 10)
