"""A tiny CMG run on easy simulated data, and its exported bundle (shared test recipe); a tiny
config and easy data on which zero-shot transfer must work (tests/training/test_zero_shot.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model.config import CMGConfig, CodebookConfig, EncoderConfig
from simulator.config import MODALITIES, SimConfig
from simulator.dataset import RunSpec, generate
from simulator.episode import episode_seeds, random_furnace_params, simulate_episode
from simulator.scenario import ConditionSpec, build_events
from simulator.types import Episode
from training.config import RunConfig, TrainConfig
from training.data.fmf_write import write_fmf

# Easy data: a hot spot (camera) that also moves the current strongly, so the condition is
# visible in both modalities and a shared code can carry it across.
EASY = SimConfig(
    minutes=8.0,
    event_free_fraction=0.25,
    max_events=1,
    condition="semi_molten",
    evidence_gain=(("semi_molten", "current", 6.0),),
    faults=False,
)


def tiny_config(seed: int = 0) -> RunConfig:
    cmg = CMGConfig(
        encoder=EncoderConfig(dim=16, layers=1, heads=2, ff=32),
        codebook=CodebookConfig(size=16, dim=16, dead_after=60, donor_within=20),
    )
    train = TrainConfig(
        seed=seed,
        steps=60,
        batch=24,
        checkpoint_every=30,
        head_epochs=4,
        val_fraction=0.25,
        threads=2,
    )
    return RunConfig(cmg=cmg, train=train)


def write_easy_data(root: Path) -> dict[str, Path]:
    """Easy train (6 furnaces, seed 40) and test (2 furnaces, seed 41) datasets."""
    out = {}
    for name, seed, furnaces in (("train", 40, 6), ("test", 41, 2)):
        spec = RunSpec(seed=seed, furnaces=furnaces, config=EASY)
        write_fmf(generate(spec), root / name, progress=False)
        out[name] = root / name
    return out


# Easy data for zero-shot transfer (docs/design/furnace.md 4.2: with every evidence gain high,
# cross-modal
# transfer must work): the two conditions with at least moderate evidence in both modalities,
# each once per furnace at gain 4 in both, long enough to give many windows; no sensor faults.
TRANSFER_CONDITIONS = ("eruption", "abnormal_exhaust")
TRANSFER_GAIN = 4.0
TRANSFER = SimConfig(
    minutes=8.0,
    faults=False,
    evidence_gain=tuple((c, m, TRANSFER_GAIN) for c in TRANSFER_CONDITIONS for m in MODALITIES),
)


def transfer_episodes(seed: int, furnaces: int) -> Iterator[Episode]:
    """`furnaces` episodes, each with one eruption (about 60 s) and one abnormal exhaust (about
    120 s) at drawn times after the normal lead-in, in alternating order."""
    rng = np.random.default_rng(seed)
    for i, (params_ss, episode_ss) in enumerate(episode_seeds(seed, furnaces, 1)):
        order = TRANSFER_CONDITIONS[:: 1 if i % 2 == 0 else -1]
        start, specs = 130.0 + rng.uniform(0.0, 30.0), []
        for condition in order:
            duration = (60.0 if condition == "eruption" else 120.0) * rng.uniform(0.8, 1.2)
            specs.append(ConditionSpec(condition, start, duration))
            start += duration + rng.uniform(40.0, 70.0)
        fid = f"zs{seed}f{i:02d}"
        fp = random_furnace_params(fid, np.random.default_rng(params_ss))
        events = build_events(specs, rng)
        yield simulate_episode(
            fp, TRANSFER, episode_ss[0], name=f"transfer-{fid}", events=events, faults=()
        )


def write_transfer_data(root: Path, seed: int = 70) -> dict[str, Path]:
    """Easy transfer train (8 furnaces, `seed`) and test (4 other furnaces) datasets."""
    out = {}
    for name, data_seed, furnaces in (("train", seed, 8), ("test", seed + 1, 4)):
        write_fmf(transfer_episodes(data_seed, furnaces), root / name, progress=False)
        out[name] = root / name
    return out


def zero_shot_config(seed: int = 0, *, steps: int = 200) -> RunConfig:
    """A tiny config that learns the transfer data on one thread in about 20 s: the default's
    recipe (InfoNCE, 4 codes per segment, rich current features) at D = 32, K = 32."""
    cmg = CMGConfig(
        encoder=EncoderConfig(
            dim=32,
            layers=1,
            heads=2,
            ff=64,
            stem_channels=(8, 16),
            specific_channels=(8, 16),
            se_reduction=4,
            decoder_channels=8,
        ),
        codebook=CodebookConfig(size=32, dim=8, dead_after=60, donor_within=20),
        align="infonce",
        code_groups=4,
        current_feature_set="rich",
        camera_pool="attention_max",
        head_pool="meanmax",
    )
    train = TrainConfig(
        seed=seed,
        steps=steps,
        batch=32,
        checkpoint_every=steps,
        head_epochs=8,
        val_fraction=0.25,
        threads=1,
    )
    return RunConfig(cmg=cmg, train=train)
