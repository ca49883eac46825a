"""Training configuration: frozen dataclasses, read from one YAML file, saved in every checkpoint.

`RunConfig(cmg=CMGConfig(...), train=TrainConfig(...))`. Unknown keys are errors, so a typo in
a config file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import CMGConfig, CodebookConfig, EncoderConfig


@dataclass(frozen=True)
class TrainConfig:
    """Pre-training, head training, selection and calibration (docs/design/cmg.md sections 6 and
    7)."""

    seed: int = 0
    steps: int = 2000  # pre-training steps
    batch: int = 64
    lr: float = 4e-4
    grad_clip: float = 0.5  # per module
    checkpoint_every: int = 500  # candidates for selection; never "last" by default
    label_modality: str = "current"  # source of the shipped head: current | camera | both
    val_fraction: float = 0.2  # of training furnaces, held out for selection and calibration
    head_epochs: int = 30
    head_lr: float = 1e-3
    head_batch: int = 256
    target_far: float = 0.01  # false-alarm rate the thresholds are calibrated for
    # Windows (docs/design/cmg.md section 2); the bundle manifest records them for the service.
    window_s: float = 16.0
    hop_s: float = 2.0
    baseline_s: float = 120.0
    long_baseline_s: float = 0.0  # > 0: a slow median baseline too (cmg.current_context long)
    pretrain_hop_s: float = 8.0  # stride of pre-training windows (overlap wastes steps)
    threads: int = 0  # torch threads; 0 = all cores
    device: str = "auto"  # pre-training: "auto" (a CUDA GPU when present), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            msg = f"device must be auto, cpu or cuda, got {self.device!r}"
            raise ValueError(msg)
        if self.label_modality not in ("current", "camera", "both"):
            msg = f"label_modality must be current, camera or both, got {self.label_modality!r}"
            raise ValueError(msg)
        if not 0.0 < self.val_fraction < 0.5:
            msg = f"val_fraction must be in (0, 0.5), got {self.val_fraction}"
            raise ValueError(msg)
        if not 0.0 < self.target_far < 0.5:
            msg = f"target_far must be in (0, 0.5), got {self.target_far}"
            raise ValueError(msg)
        if self.steps < 1 or self.batch < 2 or self.checkpoint_every < 1:
            msg = "steps and checkpoint_every must be >= 1 and batch >= 2"
            raise ValueError(msg)
        if self.long_baseline_s and self.long_baseline_s < self.baseline_s:
            msg = f"long_baseline_s must be 0 or >= baseline_s ({self.baseline_s}), "
            msg += f"got {self.long_baseline_s}"
            raise ValueError(msg)

    @property
    def window_args(self) -> dict[str, float]:
        """The `make_windows` arguments of this run's windows."""
        return {
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "baseline_s": self.baseline_s,
            "long_baseline_s": self.long_baseline_s,
        }


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides data: the model and the training recipe."""

    cmg: CMGConfig = field(default_factory=CMGConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        long_input = self.cmg.current_context == "long"
        if long_input != (self.train.long_baseline_s > 0):
            msg = "cmg.current_context: long needs train.long_baseline_s > 0 and the reverse "
            msg += f"(got {self.cmg.current_context!r} with {self.train.long_baseline_s})"
            raise ValueError(msg)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate a (nested) frozen dataclass from a dict, refusing unknown keys."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        msg = f"unknown key(s) {unknown} in {where}; known: {sorted(known)}"
        raise ValueError(msg)
    kwargs = {}
    nested = {"encoder": EncoderConfig, "codebook": CodebookConfig, "cmg": CMGConfig}
    nested["train"] = TrainConfig
    for name, value in values.items():
        if name in nested and isinstance(value, dict):
            kwargs[name] = _build(nested[name], value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from a plain dict (as saved in checkpoints or read from YAML)."""
    cfg: RunConfig = _build(RunConfig, values or {}, "config")
    return cfg


DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config file; None reads the default recipe `configs/default.yaml`.

    The dataclass defaults (`RunConfig()`) are the CMG paper's settings, kept as the base every
    file overrides; the recipe a bare `furnace train` trains is the YAML file.

    A file may start from another with `base: FILE` (relative to its own folder): the base is
    read first and this file's keys override it, section by section. The ablation configs
    are `base: default.yaml` plus the one thing they change.
    """
    if path is None:
        if not DEFAULT_CONFIG.is_file():
            msg = (
                f"the default config {DEFAULT_CONFIG} is missing (it ships with the source "
                "checkout); pass --config FILE"
            )
            raise FileNotFoundError(msg)
        path = DEFAULT_CONFIG
    return config_from_dict(_read_yaml(Path(path), ()))


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        msg = f"{path}: 'base' chain loops back to itself ({' -> '.join(map(str, seen))})"
        raise ValueError(msg)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        msg = f"{path}: a config file is a mapping with keys 'cmg' and/or 'train'"
        raise ValueError(msg)
    base = values.pop("base", None)
    if base is None:
        return values
    parent = _read_yaml(path.parent / str(base), (*seen, path.resolve()))
    return _merge(parent, values)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
