"""Fixtures for the model tests (tiny seeded configs, paired windows)."""

from __future__ import annotations

import pytest

from model.config import CMGConfig
from tests.model.factories import Batch, make_batch, make_tiny_cfg


@pytest.fixture
def tiny_cfg() -> CMGConfig:
    return make_tiny_cfg()


@pytest.fixture
def batch(tiny_cfg: CMGConfig) -> Batch:
    return make_batch(tiny_cfg)
