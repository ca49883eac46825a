"""A private redis-server on a loopback port, for tests that stop, freeze or restart Redis
(never the shared server of tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis

from tests.helpers.service import free_port, wait_for


class PrivateRedis:
    """A redis-server of one test alone (no persistence), on `port` or a free one; up and
    answering PING when the constructor returns."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_for("the private redis-server", up, 10)
        finally:
            client.close()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.thaw()
            self.proc.terminate()
            self.proc.wait(timeout=10)
