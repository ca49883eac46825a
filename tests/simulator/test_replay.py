"""The replayer against a real Redis: stream format, rates, faults, trimming, pacing, scenarios."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from simulator.config import CONDITIONS
from simulator.faults import apply_faults
from simulator.png import encode_png
from simulator.replay import Replay, stream_key
from simulator.scenario import (
    FurnaceSpec,
    Scenario,
    load_scenario,
    parse_scenario,
    random_scenario,
    simulate_scenario,
)

T0 = 1767225600.0  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parents[2]
Entry = tuple[bytes, dict[bytes, bytes]]


def _scenario(*furnaces: dict[str, Any], minutes: float = 3.0) -> Scenario:
    return parse_scenario({"seed": 7, "minutes": minutes, "furnace": list(furnaces)})


def _entries(client: redis.Redis, prefix: str, fid: str, modality: str) -> list[Entry]:
    return client.xrange(stream_key(prefix, fid, modality))  # type: ignore[return-value]


def _ts(entries: list[Entry]) -> np.ndarray:
    return np.array([float(fields[b"ts"]) for _, fields in entries])


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == "RGB" and img.format == "PNG"
        return np.asarray(img).copy()


@pytest.mark.parametrize(("height", "width", "level"), [(64, 64, 1), (5, 7, 9), (1, 1, 0)])
def test_png_round_trip_is_exact(height: int, width: int, level: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert np.array_equal(_decode(encode_png(image, level=level)), image)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))]
)
@pytest.mark.fault(
    "frames that are not (H, W, 3) uint8 (grey, RGBA, float)",
    expected="ValueError naming the shape and type",
)
def test_png_refuses_what_it_cannot_encode(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_png(bad)


def test_replay_publishes_both_streams_at_their_rates(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    scenario = _scenario({"id": "f001"}, {"id": "f-2_b"})
    replay = Replay(redis_client, scenario, prefix=key_prefix, speed=0, t0=T0)
    stats = replay.run()
    assert stats.reason == "done" and stats.total() == 4 * 360
    assert replay.keys("f001")["current"] == f"{key_prefix}furnace:f001:current"
    for fid in ("f001", "f-2_b"):
        assert stats.published[fid] == {"current": 360, "camera": 360}  # 3 min at 2 Hz, 2 fps
        current = _entries(redis_client, key_prefix, fid, "current")
        camera = _entries(redis_client, key_prefix, fid, "camera")
        assert len(current) == len(camera) == 360
        for entries in (current, camera):
            assert np.allclose(np.diff(_ts(entries)), 0.5) and _ts(entries)[0] == T0
        fields = current[0][1]
        assert set(fields) == {b"ts", b"a", b"b", b"c"}
        amps = np.array([[float(f[k]) for k in (b"a", b"b", b"c")] for _, f in current])
        assert np.isfinite(amps).all() and 5000 < np.median(amps) < 25000
        assert set(camera[0][1]) == {b"ts", b"image"}
    # What was published is the simulator's observed stream, bit for bit (frames) and to
    # the centiampere (currents).
    obs = apply_faults(next(simulate_scenario(scenario)))
    frames = _entries(redis_client, key_prefix, "f001", "camera")
    for k in (0, 123, 359):
        assert np.array_equal(_decode(frames[k][1][b"image"]), obs.frames[k])
    first = _entries(redis_client, key_prefix, "f001", "current")[0][1]
    assert [float(first[k]) for k in (b"a", b"b", b"c")] == pytest.approx(
        obs.current[0].tolist(), abs=0.006
    )


def test_schedule_holds_conditions_in_sensor_time(redis_client: redis.Redis) -> None:
    overheating = {"condition": "overheating", "start_s": 130, "duration_s": 40}
    eruption = {"condition": "eruption", "start_s": 140, "duration_s": 10, "severity": 1.5}
    breakage = {"condition": "electrode_breakage", "start_s": 125, "duration_s": 20}
    scenario = _scenario(
        {"id": "hot", "conditions": [overheating, eruption]},
        {"id": "calm"},
        {"id": "broken", "conditions": [breakage]},
    )
    replay = Replay(redis_client, scenario, prefix="unused:", t0=T0)  # schedule needs no run
    by_furnace = {(w.furnace_id, w.condition): w for w in replay.schedule()}
    assert set(by_furnace) == {
        ("hot", "overheating"),
        ("hot", "eruption"),
        ("broken", "electrode_breakage"),
    }  # "calm" is normal: nuisances only, no condition
    for (_, condition), w in by_furnace.items():
        spec = {"overheating": overheating, "eruption": eruption}.get(condition, breakage)
        assert w.onset_ts == T0 + spec["start_s"]
        assert w.end_ts == pytest.approx(T0 + spec["start_s"] + spec["duration_s"])
        assert w.onset_ts <= w.peak_ts <= w.end_ts
        assert w.onset_ts <= w.label_start_ts < w.label_end_ts <= w.end_ts + 0.5
    assert replay.fault_schedule() == []


@pytest.mark.fault(
    "a 20-s camera disconnect and a camera down for good in a replay scenario",
    expected="no frames published during the outage while the current goes on; both in the fault "
    "schedule",
)
def test_camera_outages_publish_no_frames_while_current_continues(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    outage = {"modality": "camera", "kind": "disconnected", "start_s": 140, "duration_s": 20}
    scenario = _scenario(
        {"id": "f001", "faults": [outage]}, {"id": "f002", "camera_down_at": 150.0}
    )
    replay = Replay(redis_client, scenario, prefix=key_prefix, speed=0, t0=T0)
    stats = replay.run()
    cam = _ts(_entries(redis_client, key_prefix, "f001", "camera")) - T0
    cur = _ts(_entries(redis_client, key_prefix, "f001", "current")) - T0
    assert not ((cam >= 140) & (cam < 160)).any() and cam.size == 360 - 40
    assert ((cur >= 140) & (cur < 160)).sum() == 40 and cur.size == 360
    down = _ts(_entries(redis_client, key_prefix, "f002", "camera")) - T0
    assert down.max() < 150 and down.size == 300  # the stream stops for good
    assert stats.published["f002"] == {"current": 360, "camera": 300}
    kinds = {
        (w.furnace_id, w.kind, w.start_ts - T0, w.end_ts - T0) for w in replay.fault_schedule()
    }
    assert kinds == {("f001", "disconnected", 140, 160), ("f002", "disconnected", 150, 180)}


@pytest.mark.fault(
    "replayed current faults: a NaN phase, 10 s of missing samples, a +5 s clock skew",
    expected="published as the simulator observes them: `nan` strings, a gap, skewed out-of-order "
    "ts",
)
def test_current_faults_as_the_simulator_observes_them(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    faults = [
        {"kind": "nan", "start_s": 130, "duration_s": 5, "phase": 1},
        {"kind": "missing", "start_s": 150, "duration_s": 10},
        {"modality": "current", "kind": "skew", "start_s": 165, "duration_s": 10, "value": 5.0},
    ]
    Replay(
        redis_client, _scenario({"id": "f001", "faults": faults}), prefix=key_prefix, t0=T0, speed=0
    ).run()
    entries = _entries(redis_client, key_prefix, "f001", "current")
    ts = _ts(entries) - T0
    assert ts.size == 360 - 20  # missing samples are simply not published
    nan_b = np.array([f[b"b"] == b"nan" for _, f in entries])
    in_nan = (ts >= 130) & (ts < 135)
    assert nan_b[in_nan].all() and not nan_b[~in_nan].any() and in_nan.sum() == 10
    assert all(math.isfinite(float(f[b"a"])) for _, f in entries)
    assert not ((ts >= 150) & (ts < 160)).any()
    grid = np.arange(360) / 2.0
    t_sim = grid[(grid < 150) | (grid >= 160)]  # publication order is simulation time
    skewed = (t_sim >= 165) & (t_sim < 175)
    assert np.allclose(ts, t_sim + 5.0 * skewed, atol=1e-3)  # ts carries the +5 s skew
    assert np.all(np.diff(ts[~skewed]) > 0)  # monotone except the skewed stretch
    assert np.diff(ts).min() < 0


def test_streams_are_trimmed_to_about_their_cap(redis_client: redis.Redis, key_prefix: str) -> None:
    replay = Replay(
        redis_client,
        _scenario({"id": "f001"}),
        prefix=key_prefix,
        speed=0,
        maxlen_current=50,
        maxlen_camera=20,
        batch=40,
    )
    assert replay.run().total() == 720
    keys = replay.keys("f001")
    # MAXLEN ~ trims whole radix-tree nodes (at most 100 entries each by default).
    assert 50 <= redis_client.xlen(keys["current"]) < 150
    assert 20 <= redis_client.xlen(keys["camera"]) < 120


def test_real_time_pacing_and_stopping(redis_client: redis.Redis, key_prefix: str) -> None:
    replay = Replay(redis_client, _scenario({"id": "f001"}), prefix=key_prefix, speed=20.0)
    stats = replay.run(max_seconds=1.0)
    assert stats.reason == "max_seconds" and 0.9 < stats.wall_seconds < 2.0
    # 1 s at 20x is 20 s of sensor time: 41 current samples and 41 frames, give or take.
    assert 20 <= stats.published["f001"]["current"] <= 50
    assert 12.0 <= stats.sim_seconds <= 22.0
    ts = _ts(_entries(redis_client, key_prefix, "f001", "current"))
    assert ts[0] == pytest.approx(replay.t0) and abs(replay.t0 - time.time()) < 30

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    stats = replay.run(stop=stop)
    assert stats.reason == "stopped" and time.monotonic() - started < 1.0


def test_random_furnaces_draw_their_own_conditions(redis_client: redis.Redis) -> None:
    scenario = random_scenario(3, minutes=4, seed=3, faults=False)
    replay = Replay(redis_client, scenario, t0=T0)
    assert replay.furnace_ids == ["s3f000", "s3f001", "s3f002"]
    assert replay.fault_schedule() == []
    for w in replay.schedule():
        assert w.condition in CONDITIONS and w.onset_ts >= T0 + 120  # 2-min normal lead-in
    # A scheduled normal furnace is the random furnace minus its conditions: same nuisances.
    normal = Scenario((FurnaceSpec("s3f000"),), seed=3, minutes=4)
    drawn = random_scenario(1, minutes=4, seed=3, faults=False)
    ep_normal = next(simulate_scenario(normal, render=False))
    ep_drawn = next(simulate_scenario(drawn, render=False))
    assert ep_normal.events == [] and not ep_normal.label_cur.any()
    assert ep_normal.nuisances == ep_drawn.nuisances


COND = {"condition": "overheating", "start_s": 180, "duration_s": 30}
WRONG_MODALITY = {"kind": "frozen", "modality": "current", "start_s": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minutes": 2}, "need >= 3"),
        ({"furnace": []}, r"at least one \[\[furnace\]\]"),
        ({"furnace": [{"id": "a:b"}]}, "is not allowed"),
        ({"furnace": [{"id": "f1"}, {"id": "f1"}]}, "appears twice"),
        ({"furnace": [{"id": "f1", "colour": 1}]}, r"unknown key\(s\) colour"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "condition": "hot"}]}]}, "'hot'"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "condition": "normal"}]}]}, "empty"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "start_s": 60}]}]}, "lead-in"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "start_s": 900}]}]}, "beyond"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "duration_s": 1e3}]}]}, "ends at"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "start_s": "x"}]}]}, "finite number"),
        ({"furnace": [{"id": "f1", "conditions": [COND, {**COND, "start_s": 200}]}]}, "overlaps"),
        ({"furnace": [{"id": "f1", "conditions": [{**COND, "severity": 5}]}]}, "severity"),
        (
            {"furnace": [{"id": "f1", "faults": [{"modality": "current", "kind": "frozen"}]}]},
            "missing start_s",
        ),
        ({"furnace": [{"id": "f1", "faults": [WRONG_MODALITY]}]}, "is a camera fault"),
        ({"furnace": [{"id": "f1", "faults": [{"kind": "melted", "start_s": 1}]}]}, "no sensor"),
        ({"furnace": [{"id": "f1", "camera_down_at": 1e4}]}, "camera_down_at"),
    ],
)
@pytest.mark.fault(
    "an invalid replay scenario: too short, bad or repeated ids, unknown keys or conditions, "
    "overlaps, a fault on the wrong sensor",
    expected="ValueError saying what to fix",
)
def test_invalid_scenarios_say_what_to_fix(change: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"seed": 1, "minutes": 10, "furnace": [{"id": "f1"}], **change}
    with pytest.raises(ValueError, match=message):
        parse_scenario(data)


@pytest.mark.fault(
    "a scenario file that is not valid TOML",
    expected="ValueError `not valid TOML`",
)
def test_scenario_files(tmp_path: Path) -> None:
    example = load_scenario(ROOT / "examples" / "scenario.toml")
    assert example.furnaces and all(f.furnace_id for f in example.furnaces)
    bad = tmp_path / "bad.toml"
    bad.write_text("minutes = = 3\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_scenario(bad)
    nested = {"condition": "eruption", "start_s": 190, "duration_s": 10}
    ok = parse_scenario({"minutes": 5, "furnace": [{"id": "f", "conditions": [COND, nested]}]})
    assert ok.furnaces[0].conditions is not None and len(ok.furnaces[0].conditions) == 2


@pytest.mark.fault(
    "`furnace replay --wait-redis 1` with no Redis at the URL",
    expected="exit 2 with `start redis-server or set FURNACE_REDIS_URL`",
)
def test_cli_replays_and_explains_a_missing_redis(
    redis_client: redis.Redis, key_prefix: str, redis_url: str, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.json"
    args = ["--furnaces", "1", "--minutes", "3", "--speed", "0", "--seed", "2"]
    run = subprocess.run(
        [sys.executable, "-m", "furnace", "replay", "--redis-url", redis_url, *args]
        + ["--prefix", key_prefix, "--schedule", str(truth)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "done: 360 current and" in run.stdout
    assert redis_client.xlen(f"{key_prefix}furnace:s2f000:current") == 360
    assert json.loads(truth.read_text())["furnaces"] == ["s2f000"]
    down = subprocess.run(
        [sys.executable, "-m", "furnace", "replay", "--redis-url", "redis://127.0.0.1:1/0"]
        + ["--wait-redis", "1"],  # without it a refused connection is retried until Ctrl-C
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2 and "start redis-server or set FURNACE_REDIS_URL" in down.stderr
