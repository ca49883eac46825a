"""Fixtures shared by every test package: a real Redis and one key prefix per test.

There is no fake Redis (docs/design/serving.md 1.8): the session fixture FAILS, it does not skip,
when no server answers at FURNACE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). `.ci/run`
starts one; locally run `redis-server --daemonize yes --port 6379 --save "" --appendonly no`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers.redis_keys import delete_prefix

REDIS_URL = os.environ.get("FURNACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
pytest_plugins = ["tests.helpers.reliability"]  # --reliability-report (docs/reliability.md)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"no Redis answers at {REDIS_URL} ({exc}); start one with `redis-server --daemonize "
            "yes --port 6379` or set FURNACE_TEST_REDIS_URL",
            pytrace=False,
        )
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A fresh `t:{hex}:` prefix; every key under it is deleted after the test."""
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client (bytes responses) for arranging and inspecting streams."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Easy simulated train/test datasets (tests/helpers/tiny_run.py)."""
    from tests.helpers.tiny_run import write_easy_data

    return write_easy_data(tmp_path_factory.mktemp("easy"))


@pytest.fixture(scope="session")
def tiny_run(easy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run folder (about 20 s on 2 cores)."""
    from tests.helpers.tiny_run import tiny_config
    from training.run import train_run

    run = tmp_path_factory.mktemp("run")
    train_run(easy_data["train"], run, tiny_config(), progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_bundle(
    tiny_run: Path, easy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny run exported by `training.export` (a real bundle, as `furnace export` writes)."""
    from training.export import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    key = Path(__file__).resolve().parents[1] / "keys" / "dev-bundle.key"
    export_bundle(tiny_run, out, data_dir=easy_data["train"], signing_key=key)
    return out


@pytest.fixture(scope="session")
def tiny_memory_bundle(
    tiny_bundle: Path, easy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`tiny_bundle` with memory heads (role "decide") added by
    `training.export.memory.add_memory` on its own training data (about 25 s on 2 cores
    after the tiny run)."""
    from training.export.memory import add_memory

    out = tmp_path_factory.mktemp("bundle") / "tiny-memory"
    key = Path(__file__).resolve().parents[1] / "keys" / "dev-bundle.key"
    add_memory(
        tiny_bundle, easy_data["train"], out=out, signing_key=key, progress=False, role="decide"
    )
    return out
