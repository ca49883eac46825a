"""HTTP isolation: do heavy POSTs delay the stream detections? (issue 14 item 3)

    .venv/bin/python -W ignore bench/http_isolation.py

A real service (`furnace serve` in a subprocess: uvicorn, its own process and event loop, the
shipped bundle checked against keys/dev-bundle.pub) reads a few simulated furnaces' live
streams, which a replay publishes into a real Redis (a fresh key prefix, deleted afterwards)
at `--speed` times real time. The run alternates three phases, `--rounds` times, each
`--phase-seconds` long:

(a) no HTTP load;
(b) `--clients` threads POST /v1/furnaces/{id}/windows back to back with large bodies the
    service accepts: `--frames` camera frames of `--frame-side` squared random-noise RGB PNG
    (1 bit per channel, so 8 frames of 1024x1024 fit FURNACE_MAX_BODY_BYTES), plus 16 s of
    current; every one is decoded, resized and scored;
(c) `--hostile-clients` threads POST the body of issue 14 item 3: 64 frames of 4096x4096
    zero PNG (4.2 MB), over FURNACE_MAX_REQUEST_PIXELS, refused (422) from the image headers.

The HTTP furnaces are not the streamed ones, so HTTP detections never touch their state.
Stream detection delay, per detection: the wall time its entry was written to the detections
stream (the entry id, Redis server time) minus the moment the replay reached the window's
end (its sensor time at 1x, which is what `furnace_detection_delay_seconds` measures; the
1 s grace is part of it). A detection belongs to the phase in which its window ended; the
first `--settle` seconds of each phase are left out, so load still in flight from the phase
before does not count. The replay's own lateness (how far behind schedule it published) is
printed too: it runs in this process, beside the HTTP clients, on the same cores.

Results go to docs/benchmarks.md, "HTTP load and the stream path".
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx
import numpy as np
import redis
from PIL import Image
from stream_throughput import _delete  # bench/ helper: delete every key under a prefix

from simulator.replay import Replay
from simulator.scenario import random_scenario

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "bench-http-isolation"
PHASES = ("a", "b", "c")
CURRENT_RATE_HZ = 2.0
WINDOW_SECONDS = 16.0
HOP_SECONDS = 2.0


@dataclass
class Phase:
    name: str
    start: float  # wall clock, the load starts
    stop: float = 0.0  # wall clock, the load is told to stop
    done: float = 0.0  # wall clock, every request in flight has finished


@dataclass
class Sent:
    phase: str
    status: int  # 0: no answer (connection error or client timeout)
    seconds: float
    detail: str = ""


@dataclass
class Probe:
    at: float
    status: int
    seconds: float


@dataclass
class Record:
    sent: list[Sent] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    ticks: list[tuple[float, float]] = field(default_factory=list)  # (wall, sensor s reached)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _png(pixels: np.ndarray, level: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=level)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heavy_body(frames: list[str]) -> Callable[[], bytes]:
    """A body with fresh timestamps per call: the frames 0.5 s apart ending 1 s ago, and the
    16 s of current before that end (so both graphs run)."""
    n_cur = int(WINDOW_SECONDS * CURRENT_RATE_HZ)
    samples = json.dumps([[100.0 + (i % 3), 101.0, 99.5] for i in range(n_cur)])

    def make() -> bytes:
        end = time.time() - 1.0
        parts = [
            f'{{"ts":{end - 0.5 * (len(frames) - 1 - k):.3f},"image":"{b64}"}}'
            for k, b64 in enumerate(frames)
        ]
        start = end - (n_cur - 1) / CURRENT_RATE_HZ
        return (
            f'{{"window_end":{end:.3f},'
            f'"current":{{"start":{start:.3f},"rate_hz":{CURRENT_RATE_HZ},"samples":{samples}}},'
            f'"camera":{{"frames":[{",".join(parts)}]}}}}'
        ).encode()

    return make


def hostile_body(frame: str, count: int = 64) -> Callable[[], bytes]:
    """Issue 14 item 3's body: `count` copies of one large zero PNG, timestamps 0.5 s apart."""

    def make() -> bytes:
        end = time.time() - 1.0
        parts = [
            f'{{"ts":{end - 0.5 * (count - 1 - k):.3f},"image":"{frame}"}}' for k in range(count)
        ]
        return f'{{"camera":{{"frames":[{",".join(parts)}]}}}}'.encode()

    return make


def client_loop(
    url: str, make: Callable[[], bytes], phase: str, stop: threading.Event, out: list[Sent]
) -> None:
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    with httpx.Client(timeout=120.0) as http:
        while not stop.is_set():
            body = make()
            t = time.perf_counter()
            try:
                r = http.post(url, content=body, headers=headers)
                status, detail = r.status_code, "" if r.status_code == 200 else r.text[:200]
            except httpx.HTTPError as exc:
                status, detail = 0, repr(exc)
            out.append(Sent(phase, status, time.perf_counter() - t, detail))
            if status in (0, 503):
                stop.wait(1.0)


def probe_loop(base: str, stop: threading.Event, out: list[Probe]) -> None:
    """GET /readyz every 0.5 s (issue 14 item 3: it answered 503 under the heavy POST)."""
    with httpx.Client(timeout=10.0) as http:
        while not stop.wait(0.5):
            t = time.perf_counter()
            try:
                status = http.get(f"{base}/readyz").status_code
            except httpx.HTTPError:
                status = 0
            out.append(Probe(time.time(), status, time.perf_counter() - t))


def start_service(
    args: argparse.Namespace, prefix: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "FURNACE_REDIS_URL": args.redis_url,
            "FURNACE_KEY_PREFIX": prefix,
            "FURNACE_BUNDLE": str(Path(args.bundle).resolve()),
            "FURNACE_TRUSTED_KEYS_FILE": str(ROOT / "keys" / "dev-bundle.pub"),
            "FURNACE_API_KEYS": API_KEY,
            "FURNACE_DISCOVERY_INTERVAL_SECONDS": "1",
            "FURNACE_MODEL_POLL_SECONDS": "0",
            # faster than real time the replay's sensor time runs ahead of the wall clock
            "FURNACE_MAX_FUTURE_SKEW_SECONDS": str(max(30.0, args.total * args.speed + 60.0)),
        }
    )
    cmd = [sys.executable, "-m", "furnace.cli", "serve", "--port", str(port)]
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:]
    msg = f"the service did not become ready (exit code {proc.poll()}); its log:\n{tail}"
    raise RuntimeError(msg)


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_phases(
    args: argparse.Namespace,
    base: str,
    loads: dict[str, tuple[int, Callable[[], bytes]]],
    sent: list[Sent],
) -> list[Phase]:
    """Alternate the phases, `--rounds` times, while the replay plays; every request's
    outcome is appended to `sent`."""
    phases: list[Phase] = []
    for _ in range(args.rounds):
        for name in PHASES:
            phase = Phase(name, time.time())
            stop = threading.Event()
            clients, make = loads.get(name, (0, lambda: b""))
            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(
                        f"{base}/v1/furnaces/bench-http-{name}{i}/windows",
                        make,
                        name,
                        stop,
                        sent,
                    ),
                    daemon=True,
                )
                for i in range(clients)
            ]
            for t in threads:
                t.start()
            time.sleep(args.phase_seconds)
            phase.stop = time.time()
            stop.set()
            for t in threads:
                t.join()
            phase.done = time.time()
            phases.append(phase)
    return phases


def written_and_end(client: redis.Redis, key: str) -> list[tuple[float, float]]:
    """(written: the entry id's Redis server time, window_end) of every detection."""
    rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))
    return [(int(i.split(b"-")[0]) / 1000.0, float(f[b"window_end"])) for i, f in rows]


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument(
        "--redis-url", default=os.environ.get("FURNACE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--furnaces", type=int, default=6, help="live furnaces (streams)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay, x real time")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before phase 1")
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="times each phase is run")
    parser.add_argument("--settle", type=float, default=3.0, help="left out at phase start")
    parser.add_argument("--clients", type=int, default=4, help="(b): concurrent clients")
    parser.add_argument("--frames", type=int, default=8, help="(b): frames per request")
    parser.add_argument("--frame-side", type=int, default=1024, help="(b): frame width/height")
    parser.add_argument("--hostile-clients", type=int, default=4, help="(c): concurrent clients")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if not Path(args.bundle, "manifest.json").is_file():
        parser.error(f"no bundle at {args.bundle}: run `make model` or pass --bundle")
    args.total = args.warmup + args.rounds * len(PHASES) * args.phase_seconds + 10.0

    rng = np.random.default_rng(args.seed)
    side = args.frame_side
    frames = [
        _png((rng.integers(0, 2, (side, side, 3)) * 255).astype(np.uint8), 6)
        for _ in range(args.frames)
    ]
    zero = _png(np.zeros((4096, 4096, 3), np.uint8), 9)
    make_heavy, make_hostile = heavy_body(frames), hostile_body(zero)
    heavy_bytes, hostile_bytes = len(make_heavy()), len(make_hostile())
    loads = {"b": (args.clients, make_heavy), "c": (args.hostile_clients, make_hostile)}

    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    scenario = random_scenario(
        args.furnaces,
        minutes=max(3.0, args.total * args.speed / 60.0),
        seed=args.seed,
        faults=False,
    )
    replay = Replay(client, scenario, prefix=prefix, speed=args.speed)
    grace = 1.0  # FURNACE_GRACE_SECONDS, the default
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "service.log")
        proc = start_service(args, prefix, port, log)
        try:
            t_start = time.perf_counter()
            wait_ready(base, proc, log)
            startup = time.perf_counter() - t_start
            model = httpx.get(f"{base}/v1/model", timeout=5.0).json()
            record = Record()
            stop_replay, stop_probe = threading.Event(), threading.Event()
            # sensor time = the wall clock at 1x, starting on a hop boundary (as the plant's
            # 2 Hz samples may), so an entry lands on each window's end + grace
            wall0 = math.ceil(time.time() / HOP_SECONDS + 1.0) * HOP_SECONDS
            time.sleep(max(0.0, wall0 - time.time()))
            replay.t0 = wall0
            feeder = threading.Thread(
                target=replay.run,
                kwargs={
                    "stop": stop_replay,
                    "progress": lambda s, _n: record.ticks.append((time.time(), s)),
                },
                daemon=True,
            )
            feeder.start()
            prober = threading.Thread(
                target=probe_loop, args=(base, stop_probe, record.probes), daemon=True
            )
            prober.start()
            time.sleep(args.warmup)
            phases = run_phases(args, base, loads, record.sent)
            time.sleep(grace + 3.0)  # the last windows close and are scored
            stop_replay.set()
            stop_probe.set()
            feeder.join()
            prober.join()
            detections = [
                (written, wall0 + (end - wall0) / args.speed)
                for f in replay.furnace_ids
                for written, end in written_and_end(client, f"{prefix}furnace:{f}:detections")
            ]
            counted = re.search(
                r"^furnace_detection_delay_seconds_count (\S+)$",
                httpx.get(f"{base}/metrics", timeout=10.0).text,
                re.MULTILINE,
            )
        finally:
            stop_service(proc)
            _delete(client, prefix)
            client.close()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"bundle {model.get('model_version', '?')}; service ready in {startup:.1f} s; "
        f"{args.furnaces} furnaces live at {args.speed:g}x real time; {args.rounds} rounds of "
        f"(a) (b) (c), {args.phase_seconds:g} s each, the first {args.settle:g} s of each left out"
    )
    print(
        f"(b): {args.clients} clients, {args.frames} frames of {side}x{side} noise PNG + 16 s "
        f"of current, {heavy_bytes / 1e6:.1f} MB per request; (c): {args.hostile_clients} "
        f"clients, 64 frames of 4096x4096 zero PNG, {hostile_bytes / 1e6:.1f} MB per request"
    )
    names = {"a": "(a) no HTTP load", "b": "(b) accepted heavy POSTs", "c": "(c) over-budget POSTs"}
    delays: dict[str, list[float]] = {p: [] for p in PHASES}
    for written, reached in detections:
        for ph in phases:
            if ph.start + args.settle <= reached < ph.stop:
                delays[ph.name].append(written - reached)
    seconds = {p: sum(ph.stop - ph.start for ph in phases if ph.name == p) for p in PHASES}
    header = (
        f"{'phase':26s} {'windows':>7s} {'p50 s':>6s} {'p95 s':>6s} {'max s':>6s} "
        f"{'replay late max s':>17s} {'/readyz max s':>13s} {'not 200':>7s}  HTTP"
    )
    print(header)
    for p in PHASES:
        d = delays[p]
        spans = [(ph.start, ph.done) for ph in phases if ph.name == p]

        def inside(t: float, spans: list[tuple[float, float]] = spans) -> bool:
            return any(a <= t < b for a, b in spans)

        late = [wall - (wall0 + s / args.speed) for wall, s in record.ticks if inside(wall)] or [
            0.0
        ]
        probes = [pr for pr in record.probes if inside(pr.at)]
        sent = [s for s in record.sent if s.phase == p]
        codes = Counter(s.status for s in sent)
        http = "none"
        if sent:
            ok = [s.seconds for s in sent if s.status in (200, 422)]
            http = (
                f"{len(sent)} requests ({len(sent) / seconds[p]:.1f}/s): "
                + ", ".join(f"{c or 'no answer'}: {n}" for c, n in sorted(codes.items()))
                + (f"; latency median {statistics.median(ok):.2f} s" if ok else "")
            )
        stats = (
            f"{quantile(d, 0.5):6.3f} {quantile(d, 0.95):6.3f} {max(d):6.3f}"
            if d
            else f"{'-':>6s} {'-':>6s} {'-':>6s}"
        )
        print(
            f"{names[p]:26s} {len(d):7d} {stats} {max(late):17.3f} "
            f"{max((pr.seconds for pr in probes), default=0.0):13.3f} "
            f"{sum(pr.status != 200 for pr in probes):7d}  {http}"
        )
    if delays["a"] and delays["b"]:
        a, b = delays["a"], delays["b"]
        print(
            f"ratio (b)/(a): p50 {quantile(b, 0.5) / quantile(a, 0.5):.2f}x, "
            f"p95 {quantile(b, 0.95) / quantile(a, 0.95):.2f}x, max {max(b) / max(a):.2f}x"
        )
        # no load can shorten the grace: the part beyond it is what load can stretch
        ga, gb = [d - grace for d in a], [d - grace for d in b]
        parts = [
            f"{name} {fa:.3f} -> {fb:.3f} s ({fb / fa:.2f}x)" if fa > 0 else name
            for name, fa, fb in (
                ("p50", quantile(ga, 0.5), quantile(gb, 0.5)),
                ("p95", quantile(ga, 0.95), quantile(gb, 0.95)),
                ("max", max(ga), max(gb)),
            )
        ]
        print(f"beyond the {grace:g} s grace, (a) -> (b): " + ", ".join(parts))
    odd = Counter(s.detail for s in record.sent if s.status not in (200, 422))
    for detail, n in odd.most_common(3):
        print(f"  unexpected answer x{n}: {detail}")
    if counted is not None:
        accepted = sum(s.status == 200 for s in record.sent)
        print(
            f"  furnace_detection_delay_seconds counted {float(counted.group(1)):.0f} detections: "
            f"{len(detections)} from the streams, {accepted} POSTed windows answered 200"
        )
    refused = [s.detail for s in record.sent if s.phase == "c" and s.status == 422]
    if refused:
        print(f"  (c) refusal: {refused[0][:160]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
