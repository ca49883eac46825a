"""Containers the simulator returns: one episode of one furnace, and its sensor faults.

Array names and shapes follow docs/design/furnace.md 7.8. Observations are stored clean; sensor
faults are a list of events applied deterministically on read or replay (`simulator.faults`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class FaultEvent:
    """One sensor fault: never a furnace condition, only a per-modality health flag."""

    kind: str  # a key of config.FAULT_MODALITY, or "skew"
    modality: str  # "current" | "camera"
    start_s: float
    end_s: float
    phase: int = -1  # current faults on one phase (0-2), -1 for all phases
    value: float = 0.0  # kind-specific: skew offset in s, occlusion coverage, ...
    seed: int = 0  # for the fault's own noise (black frames, occluder texture)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "modality": self.modality,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "phase": self.phase,
            "value": self.value,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Episode:
    """One furnace, one continuous stretch of operation, both modalities from one state.

    Shapes: N current samples at 2 Hz, F camera frames at `camera_fps`.
    """

    name: str  # FMF-Benchmark NAME: no dots
    furnace_id: str
    start_epoch: float  # Unix seconds of t = 0 (whole second, for the FMF timestamp strings)
    t_cur: NDArray[np.float64]  # (N,) seconds since start
    current: NDArray[np.float32]  # (N, 3) A, clean
    action: NDArray[np.float32]  # (N, 3) electrode action in [-10, 10]
    plc: NDArray[np.uint8]  # (N, 4) power_on, feeding, exhaust, auto bits
    setpoint: NDArray[np.float32]  # (N, 3) A
    label_cur: NDArray[np.int8]  # (N,) class index
    sev_cur: NDArray[np.float32]  # (N,) severity in [0, 1]
    vis_cur: NDArray[np.bool_]  # (N,) condition visible in the current
    t_frame: NDArray[np.float64]  # (F,) seconds since start
    frames: NDArray[np.uint8]  # (F, 64, 64, 3) RGB, clean
    mask: NDArray[np.uint8]  # (F, 64, 64) hot-spot mask, 0/1
    label_frame: NDArray[np.int8]  # (F,)
    sev_frame: NDArray[np.float32]  # (F,)
    vis_frame: NDArray[np.bool_]  # (F,) condition visible on camera
    latent: dict[str, NDArray[np.float32]]  # 2 Hz latent state, (N,) or (N, 3) each
    events: list[dict[str, Any]]  # condition events with onset, build-up end, end, params
    nuisances: list[dict[str, Any]]  # nuisance events (labelled normal)
    faults: list[FaultEvent] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # seed, version, furnace parameters
