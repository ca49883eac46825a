"""Run configs: `base:` inheritance, and every shipped config loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import RunConfig, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


def test_a_bare_train_uses_the_default_recipe() -> None:
    # `furnace train` without --config passes None: the YAML default, not the dataclass one.
    assert load_config(None) == load_config(CONFIGS / "default.yaml")
    assert load_config(None) != RunConfig()
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["default.yaml"]


def test_an_ablation_is_the_default_plus_its_one_change() -> None:
    default = load_config(CONFIGS / "default.yaml")
    ablation = load_config(CONFIGS / "experiments" / "ablation_no_mm_ema.yaml")
    assert ablation.cmg.mm_ema is False and default.cmg.mm_ema is True
    assert ablation.train == default.train
    assert dataclasses.replace(ablation.cmg, mm_ema=True) == default.cmg


def test_base_merges_sections_and_refuses_loops(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "cmg: {codebook: {size: 32, dim: 8}, encoder: {dim: 8}}\ntrain: {steps: 7}\n"
    )
    (tmp_path / "b.yaml").write_text("base: a.yaml\ncmg: {codebook: {size: 64}}\n")
    cfg = config_to_dict(load_config(tmp_path / "b.yaml"))
    assert cfg["cmg"]["codebook"]["size"] == 64 and cfg["cmg"]["codebook"]["dim"] == 8
    assert cfg["train"]["steps"] == 7
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "c.yaml")


def test_the_training_device_is_checked() -> None:
    import torch

    from training.config import TrainConfig
    from training.pretrain import resolve_device

    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        TrainConfig(device="tpu")
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")
