"""A tiny CMG run on easy simulated data, and its exported bundle (shared test recipe)."""

from __future__ import annotations

from pathlib import Path

from model.config import CMGConfig, CodebookConfig, EncoderConfig
from simulator.config import SimConfig
from simulator.dataset import RunSpec, generate
from training.config import RunConfig, TrainConfig
from training.fmf_write import write_fmf

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
