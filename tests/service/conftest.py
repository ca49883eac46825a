"""Fixtures of the service's integration tests: a real bundle, its manifest and window geometry,
key prefixes and settings under them (helpers: tests/helpers/service.py).

`bundle_dir` prefers the shipped bundle `models/default/` and falls back to the session's tiny
trained bundle (`tiny_bundle`); `FURNACE_TEST_BUNDLE=<folder>` overrides both. `memory_bundle`
is a bundle with memory heads: `bundle_dir` when it has them, else the tiny bundle with them
added (`tiny_memory_bundle`); `FURNACE_TEST_MEMORY_BUNDLE=<folder>` overrides both. Tests read
window geometry, class names and thresholds from the bundle's manifest, never from literals.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.bundle import Manifest, read_manifest
from service.settings import Settings
from service.types import WindowSpec
from tests.helpers.redis_keys import delete_prefix
from tests.helpers.service import (
    make_settings,
    resolve_bundle,
    resolve_memory_bundle,
)


@pytest.fixture(scope="session")
def bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle the service tests serve (`resolve_bundle`)."""
    return resolve_bundle(request, tmp_path_factory)


@pytest.fixture(scope="session")
def memory_bundle(request: pytest.FixtureRequest, bundle_dir: Path) -> Path:
    """A bundle with memory heads (`resolve_memory_bundle`)."""
    return resolve_memory_bundle(request, bundle_dir)


@pytest.fixture(scope="session")
def manifest(bundle_dir: Path) -> Manifest:
    return read_manifest(bundle_dir)


@pytest.fixture(scope="session")
def spec(manifest: Manifest) -> WindowSpec:
    return manifest.window


@pytest.fixture(scope="module")
def module_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix shared by one module's tests (their furnace ids keep them apart)."""
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def settings_factory(redis_url: str, key_prefix: str, bundle_dir: Path) -> Callable[..., Settings]:
    """`settings_factory(**overrides)`: `make_settings` under this test's key prefix."""

    def build(**overrides: Any) -> Settings:
        return make_settings(redis_url, key_prefix, bundle_dir, **overrides)

    return build
