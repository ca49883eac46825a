"""The stream path end to end: replay -> Redis Streams -> the service -> detections.

    .venv/bin/python bench/stream_throughput.py --furnaces 8 --minutes 10

Two measurements against a real Redis, each with a fresh key prefix (deleted afterwards):

1. **Backlog drain**: the replay publishes every entry at once (`speed 0`), then the service
   starts with `group_start_id="0"` and works through the backlog. Windows scored per second
   until every furnace's last window is detected (service start-up included), with each
   `--workers` value (`FURNACE_INFERENCE_WORKERS`) in turn, `--repeats` times, the best of
   each kept, and their ratio.
2. **Live lag**: the replay publishes at `--speed` times real time while the service runs;
   for every detection, the wall time between the moment the replay published the entry that
   closes the window (sensor time end + grace) and the detection's stream entry id (Redis
   server time in ms). Median, 95th percentile and maximum.

The service runs in this process (its lifespan under Starlette's TestClient: the stream
consumer only, no HTTP requests). Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import threading
import time
import uuid
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from simulator.replay import Replay
from simulator.scenario import random_scenario

T0 = 1_700_000_000.0  # sensor time of t_sim = 0, a multiple of the hop


def _delete(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _settings(args: argparse.Namespace, prefix: str, workers: int) -> Settings:
    return Settings(
        redis_url=args.redis_url,
        key_prefix=prefix,
        bundle=args.bundle,
        auth_disabled=True,
        exit_on_consumer_failure=False,
        inference_workers=workers,
        trusted_keys_file=Path(__file__).resolve().parents[1] / "keys" / "dev-bundle.pub",
        block_ms=200,
        discovery_interval_seconds=0.2,
    )


def _last_end(minutes: float, hop: float = 2.0) -> float:
    return math.floor((T0 + minutes * 60.0 - 0.5 - 1.0) / hop) * hop


def _done(client: redis.Redis, prefix: str, furnaces: list[str], last: float) -> bool:
    for f in furnaces:
        rows = client.xrevrange(f"{prefix}furnace:{f}:detections", count=1)
        if not rows or float(rows[0][1][b"window_end"]) < last - 1e-6:
            return False
    return True


def _count(client: redis.Redis, prefix: str, furnaces: list[str]) -> int:
    return sum(int(client.xlen(f"{prefix}furnace:{f}:detections")) for f in furnaces)


def drain(args: argparse.Namespace, workers: int) -> tuple[int, float]:
    """(windows detected, seconds) to work through a published backlog."""
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        scenario = random_scenario(
            args.furnaces, minutes=args.minutes, seed=args.seed, faults=False
        )
        replay = Replay(client, scenario, prefix=prefix, speed=0, t0=T0)
        replay.run()
        last = _last_end(args.minutes)
        t0 = time.perf_counter()
        with TestClient(create_app(_settings(args, prefix, workers), group_start_id="0")):
            while not _done(client, prefix, replay.furnace_ids, last):
                if time.perf_counter() - t0 > args.timeout:
                    msg = f"backlog not drained in {args.timeout:g} s"
                    raise TimeoutError(msg)
                time.sleep(0.05)
            seconds = time.perf_counter() - t0
        return _count(client, prefix, replay.furnace_ids), seconds
    finally:
        _delete(client, prefix)
        client.close()


def live_lag(args: argparse.Namespace) -> list[float]:
    """Seconds from the closing entry's publication to the detection, per detection."""
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    grace = Settings(auth_disabled=True).grace_seconds
    try:
        scenario = random_scenario(
            args.furnaces, minutes=args.lag_minutes, seed=args.seed, faults=False
        )
        replay = Replay(client, scenario, prefix=prefix, speed=args.speed, t0=T0)
        with TestClient(create_app(_settings(args, prefix, args.workers[0]), group_start_id="0")):
            time.sleep(1.0)  # the consumer is up before the first entry
            wall0 = time.time()
            feeder = threading.Thread(target=replay.run, daemon=True)
            feeder.start()
            feeder.join()
            last = _last_end(args.lag_minutes)
            deadline = time.perf_counter() + args.timeout
            while not _done(client, prefix, replay.furnace_ids, last - 2.0):
                if time.perf_counter() > deadline:
                    break
                time.sleep(0.1)
        lags = []
        for f in replay.furnace_ids:
            for entry_id, fields in client.xrange(f"{prefix}furnace:{f}:detections"):
                written = int(entry_id.split(b"-")[0]) / 1000.0
                closing = float(fields[b"window_end"]) + grace
                published = wall0 + (closing - T0) / args.speed
                lags.append(written - published)
        return lags
    finally:
        _delete(client, prefix)
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument(
        "--redis-url", default=os.environ.get("FURNACE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--furnaces", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0, help="backlog per furnace")
    parser.add_argument("--workers", default="1,2", help="inference workers to compare")
    parser.add_argument("--speed", type=float, default=20.0, help="live replay, x real time")
    parser.add_argument("--lag-minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="drains per setting, best kept")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    if not Path(args.bundle, "manifest.json").is_file():
        parser.error(f"no bundle at {args.bundle}: run `make model` or pass --bundle")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"backlog: {args.furnaces} furnaces x {args.minutes:g} min, both modalities at 2 Hz")
    rates: dict[int, float] = {}
    for r in range(args.repeats):  # settings alternate, so drift hits both alike
        for w in args.workers:
            n, s = drain(args, w)
            rates[w] = max(rates.get(w, 0.0), n / s)
            print(f"  [{r + 1}] inference_workers={w}: {n} windows in {s:.1f} s = {n / s:.1f}/s")
    for w in args.workers:
        print(f"  inference_workers={w}: best {rates[w]:.1f} windows/s")
    base = args.workers[0]
    for w in args.workers[1:]:
        print(f"  ratio workers {w} / {base}: {rates[w] / rates[base]:.2f}x")
    real_time = args.furnaces / 2.0  # windows per second the plant produces (one per 2-s hop)
    print(
        f"  the plant produces {real_time:.1f} windows/s: headroom {rates[base] / real_time:.0f}x"
    )
    lags = sorted(live_lag(args))
    p95 = lags[int(0.95 * (len(lags) - 1))]
    print(
        f"live at {args.speed:g}x real time ({args.furnaces} furnaces, {args.lag_minutes:g} min): "
        f"{len(lags)} detections, lag median {statistics.median(lags):.3f} s, "
        f"p95 {p95:.3f} s, max {lags[-1]:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
