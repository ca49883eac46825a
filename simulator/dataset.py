"""A simulated run: many furnaces, each with its own domain randomisation, and their episodes.

Naming follows the FMF-Benchmark NAME rule (no dots). Furnace ids are stable for a seed, so a
held-out test set is simply a run with another master seed (disjoint SeedSequence trees).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from simulator.config import SimConfig
from simulator.episode import EPOCH_2026, episode_seeds, random_furnace_params, simulate_episode
from simulator.types import Episode


@dataclass(frozen=True)
class RunSpec:
    """What `furnace simulate` generates."""

    seed: int = 0
    furnaces: int = 4
    episodes_per_furnace: int = 1
    config: SimConfig = SimConfig()

    def __post_init__(self) -> None:
        if self.furnaces < 1 or self.episodes_per_furnace < 1:
            msg = "need at least one furnace and one episode per furnace"
            raise ValueError(msg)
        if self.seed < 0:
            msg = f"seed must be >= 0, got {self.seed}"
            raise ValueError(msg)

    @property
    def n_episodes(self) -> int:
        return self.furnaces * self.episodes_per_furnace


def furnace_id(seed: int, index: int) -> str:
    return f"s{seed}f{index:03d}"


def episode_name(seed: int, furnace: int, episode: int) -> str:
    return f"sim-s{seed}-f{furnace:03d}-e{episode:02d}"


def generate(spec: RunSpec, *, render: bool = True) -> Iterator[Episode]:
    """Yield the run's episodes in a fixed order (furnace-major), deterministically.

    Args:
        spec: seed, number of furnaces and episodes, simulation config.
        render: False skips the camera (zero frames) for fast current statistics.
    """
    cfg = spec.config
    gap_s = int(cfg.minutes * 60) + 3600
    for i, (params_ss, ep_seeds) in enumerate(
        episode_seeds(spec.seed, spec.furnaces, spec.episodes_per_furnace)
    ):
        fid = furnace_id(spec.seed, i)
        fp = random_furnace_params(fid, np.random.default_rng(params_ss), profile=cfg.profile)
        for j, ss in enumerate(ep_seeds):
            yield simulate_episode(
                fp,
                cfg,
                ss,
                name=episode_name(spec.seed, i, j),
                start_epoch=EPOCH_2026 + 86400 * i + gap_s * j,
                render=render,
            )
