"""`furnace replay` against a Redis that refuses connections (issue 14: 9): it waits and
retries with a log line instead of exiting, at start and mid-run. A private redis-server on a
free port stands in (tests/helpers/redis_server.py; never the shared one)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from simulator.replay import Replay
from simulator.scenario import parse_scenario
from tests.helpers.redis_server import PrivateRedis
from tests.helpers.service import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.mark.fault(
    "`furnace replay` started while Redis refuses connections (not up yet)",
    expected="a log line per try and retries with backoff; publishes once Redis is up",
)
def test_replay_waits_for_a_redis_that_refuses_connections(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "furnace", "replay", "--redis-url", f"redis://127.0.0.1:{port}/0"]
    cmd += ["--furnaces", "1", "--minutes", "3", "--speed", "0", "--no-faults", "--prefix", "t:r:"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first refused try
        assert "cannot reach Redis" in line and "retrying" in line, line
        assert proc.poll() is None  # still waiting, not exited
        server = PrivateRedis(tmp_path, port)
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "done:" in out
        client = redis.Redis(port=port)
        keys = sorted(k.decode() for k in client.keys("t:r:*"))
        assert len(keys) == 2 and all(client.xlen(k) > 300 for k in keys)
        last = client.xrevrange(keys[0], count=1)[0][1][b"ts"]
        assert float(last) <= time.time() + 1.0  # fast replay: sensor time never ahead
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None:
            server.stop()


@pytest.mark.fault(
    "Redis restarted (connection refused for a while) in the middle of a replay",
    expected="the replay logs, retries with backoff and carries on from the entries due",
)
def test_a_replay_rides_out_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = PrivateRedis(tmp_path, port)
    scenario = parse_scenario({"seed": 7, "minutes": 3.0, "furnace": [{"id": "f001"}]})
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
    replay = Replay(client, scenario, prefix="t:m:", speed=0, batch=50, reconnect=True)
    restarted = threading.Event()
    state: dict[str, PrivateRedis | None] = {"server": server}

    def restart() -> None:
        time.sleep(1.5)
        state["server"] = PrivateRedis(tmp_path, port)
        restarted.set()

    def progress(_t: float, _n: int) -> None:
        if not restarted.is_set() and state["server"] is server:
            server.stop()  # the next pipeline is refused until the restart
            state["server"] = None
            threading.Thread(target=restart, daemon=True).start()

    try:
        stats = replay.run(progress=progress, max_seconds=60)
        assert stats.reason == "done" and restarted.is_set()
        total = sum(client.xlen(k) for k in client.keys("t:m:*"))
        assert 0 < total <= stats.total() and stats.total() == 720
    finally:
        client.close()
        if (last := state["server"]) is not None:
            last.stop()
