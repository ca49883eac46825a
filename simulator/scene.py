"""What the camera renderer sees of the latent furnace state, sampled at frame times.

`simulator.episode` builds a `SceneState` from the 2 Hz latent state; `simulator.camera`
turns it into frames. Nothing in here depends on how the current is synthesised, so changing
the renderer never changes the currents (docs/design/furnace.md 7.7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class HotSpot:
    """One growing irregular hot spot on the shell (semi_molten, docs/design/furnace.md 4.2 and
    7.4).

    Position is in shell coordinates: u in [0, 1] across the visible shell width, v in [0, 1]
    from the top of the shell (below the rim) to the bottom of the frame.
    """

    u: float
    v: float
    shape_seed: int  # seeds the 3-6 jittered Gaussians of the irregular shape
    radius_px: float  # final radius at severity 1, in 64-px frame pixels (6-16)
    peak_intensity: float  # incandescence at severity 1, in [0.5, 1.2]
    severity: F64  # (F,) in [0, 1]; radius and intensity follow it


@dataclass(frozen=True)
class SceneState:
    """Camera-relevant latent state at each frame time. All arrays have shape (F,).

    Levels are dimensionless. 1.0 for `rim_glow` is the normal glow of an operating furnace;
    0 elsewhere means "absent".
    """

    t: F64  # frame times, seconds since episode start
    rim_glow: F64  # >= 0; rises with melt rate (overheating), decays after a power cut
    flame: F64  # >= 0; flame light at the rim (1 normal)
    smoke: F64  # [0, 1] smoke density over the rim and upper frame
    flare: F64  # [0, 1] local flame flares at the rim (exhaust bursts, normal venting)
    dust: F64  # [0, 1] feeding dust and slight darkening at the rim
    ejecta: F64  # [0, 1] eruption intensity (count and extent of bright particles)
    ejecta_extent: F64  # [0.1, 0.5] fraction of the frame the ejecta reach
    ejecta_dir: F64  # radians, main direction of the spray (0 = up)
    mist: F64  # [0, 1] opacity of the drifting water-mist veil (process nuisance)
    hotspots: tuple[HotSpot, ...] = field(default_factory=tuple)

    @property
    def n_frames(self) -> int:
        return int(self.t.shape[0])
