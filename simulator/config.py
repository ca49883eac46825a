"""Constants and parameter dataclasses of the furnace simulator (docs/design/furnace.md sections 2,
4-7).

Every number that docs/design/furnace.md marks as a guess is a field here, so experiments can move
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SIM_VERSION = "0.1.0"

CLASS_NAMES: tuple[str, ...] = (
    "normal",
    "semi_molten",
    "overheating",
    "eruption",
    "abnormal_exhaust",
    "electrode_breakage",
)
CONDITIONS: tuple[str, ...] = CLASS_NAMES[1:]
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
MODALITIES: tuple[str, ...] = ("current", "camera")

CURRENT_RATE_HZ = 2.0  # PLC packet rate, samples per second per phase
CLIP_A = 20000.0  # measurement ceiling of the current transducers
FRAME_PX = 64  # frames are rendered at 64 x 64 RGB

# Evidence strength per condition and modality (docs/design/furnace.md section 4.2).
EVIDENCE: dict[str, dict[str, str]] = {
    "semi_molten": {"current": "weak", "camera": "strong"},
    "overheating": {"current": "moderate", "camera": "weak"},
    "eruption": {"current": "strong", "camera": "strong"},
    "abnormal_exhaust": {"current": "moderate", "camera": "moderate"},
    "electrode_breakage": {"current": "strong", "camera": "none"},
}

# Per-modality health bits (docs/design/furnace.md section 6). A fault never changes the condition
# label.
CURRENT_HEALTH: dict[str, int] = {"nan": 1, "stuck": 2, "clipped": 4, "missing": 8, "skew": 16}
CAMERA_HEALTH: dict[str, int] = {
    "frozen": 1,
    "black": 2,
    "occluded": 4,
    "disconnected": 8,
    "skew": 16,
}
FAULT_MODALITY: dict[str, str] = {
    "nan": "current",
    "stuck": "current",
    "clipped": "current",
    "missing": "current",
    "frozen": "camera",
    "black": "camera",
    "occluded": "camera",
    "disconnected": "camera",
}

# Reference statistics of the public 30-minute production log (docs/design/furnace.md section 2.1),
# averaged over the three phases where the table gives one figure per phase.
LOG_REFERENCE: dict[str, float] = {
    "mean_a": (15264 + 15257 + 15251) / 3,
    "mean_over_setpoint": (15264 / 15085 + 15257 / 15125 + 15251 / 14628) / 3,
    "std_a": (1583 + 1727 + 2038) / 3,
    "std60_median_a": (1265 + 1492 + 1733) / 3,
    "lag1_autocorr": (0.82 + 0.62 + 0.79) / 3,
    "band_0.01_0.05": 0.441,
    "band_0.05_0.2": 0.279,
    "band_0.2_0.5": 0.137,
    "cross_phase_corr": 0.32,
    "imbalance_median": 0.133,
    "imbalance_p95": 0.371,
    "clip_fraction": (9 + 0 + 43) / (3 * 3600),
    "dips_per_10min": (9 + 13 + 20) / 3 / 3,
}

# Band shares of the mean-removed current spectrum, phase A of the log (section 2.1).
BAND_EDGES_HZ: tuple[float, ...] = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0)
BAND_SHARES: tuple[float, ...] = (0.079, 0.441, 0.279, 0.137, 0.065)
# Shares the noise generator is shaped to. Dips, feeding and drift add broadband and
# low-frequency power on top, so the generator puts more weight in 0.01-0.05 Hz than the
# log shows in order for the *measured* shares to land on BAND_SHARES (docs/simulator.md).
GENERATOR_SHARES: tuple[float, ...] = (0.04, 0.54, 0.25, 0.12, 0.05)


@dataclass(frozen=True)
class SimConfig:
    """What one simulated run looks like. Fields are docs/design/furnace.md defaults unless
    noted."""

    minutes: float = 30.0  # episode length
    camera_fps: float = 2.0  # 2 matches the service, 25 mimics the benchmark
    lead_in_s: float = 120.0  # every episode opens with normal operation
    event_free_fraction: float = 0.4  # share of episodes without a condition event
    max_events: int = 2
    s_label: float = 0.15  # severity from which a sample carries the condition label
    profile: str = "default"  # "default" | "reference" (setpoint of the log) | "out_of_range"
    faults: bool = True  # draw sensor-fault events (applied on read or replay)
    fault_rate_per_h: float = 2.0
    mist_visibility_threshold: float = 0.25  # hot-spot contrast after mist counted as visible
    # Multiplier of each condition's signature per modality (docs/design/furnace.md 4.2
    # evidence_gain).
    evidence_gain: tuple[tuple[str, str, float], ...] = ()
    # Force the condition of every event-holding episode (None: draw uniformly).
    condition: str | None = None

    def __post_init__(self) -> None:
        if self.minutes * 60.0 < self.lead_in_s + 60.0:
            msg = f"minutes={self.minutes} leaves no room after the {self.lead_in_s} s lead-in"
            raise ValueError(msg)
        if self.camera_fps <= 0 or self.camera_fps > 30:
            msg = f"camera_fps must be in (0, 30], got {self.camera_fps}"
            raise ValueError(msg)
        if self.profile not in ("default", "reference", "out_of_range"):
            msg = f"unknown profile {self.profile!r}: use default, reference or out_of_range"
            raise ValueError(msg)
        if self.condition is not None and self.condition not in CONDITIONS:
            msg = f"unknown condition {self.condition!r}: choose from {', '.join(CONDITIONS)}"
            raise ValueError(msg)
        for name, modality, _ in self.evidence_gain:
            if name not in CONDITIONS or modality not in MODALITIES:
                msg = f"evidence_gain entry ({name}, {modality}) names no condition/modality"
                raise ValueError(msg)

    def gain(self, condition: str, modality: str) -> float:
        """Evidence multiplier of one condition in one modality (1.0 unless configured)."""
        for name, mod, value in self.evidence_gain:
            if name == condition and mod == modality:
                return value
        return 1.0


@dataclass(frozen=True)
class CameraParams:
    """Per-furnace camera pose, exposure and scene look (docs/design/furnace.md 7.6)."""

    shift_px: tuple[float, float] = (0.0, 0.0)  # (dx, dy) in output pixels
    scale: float = 1.0
    roll_deg: float = 0.0
    gain: float = 1.0
    gamma: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_dn: float = 2.0  # sensor noise sigma in digital numbers (0-255)
    texture_seed: int = 0
    shell_rgb: tuple[float, float, float] = (0.22, 0.20, 0.19)  # base shell colour in [0, 1]
    shell_width: float = 0.75  # fraction of the frame width the shell fills
    seam_spacing_px: float = 14.0
    rim_rows: float = 0.12  # fraction of rows above the shell where the rim is visible
    mist_base: float = 0.1  # standing mist level
    flicker_amp: float = 0.06


@dataclass(frozen=True)
class FurnaceParams:
    """Per-furnace electrical parameters (docs/design/furnace.md 2.2 and 7.6)."""

    furnace_id: str
    setpoint_a: float = 15000.0
    phase_offsets: tuple[float, float, float] = (0.0, 0.0, 0.0)  # relative, +-4 %
    drift_sigma_a: float = 300.0  # OU drift of the setpoint
    drift_tau_s: float = 600.0
    sigma_frac: float = 0.115  # fluctuation std / setpoint
    rho: float = 0.4  # shared fraction of the fluctuation across phases
    tilt: float = 1.0  # scales the spectral shares above 0.2 Hz
    dip_rate_per_10min: float = 4.5  # brief single-phase dips, per phase
    action_scale_a: float = 640.0  # A per electrode action unit
    camera: CameraParams = field(default_factory=CameraParams)
