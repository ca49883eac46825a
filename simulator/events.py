"""Condition events and process nuisances of one episode, and their severity curves.

Conditions follow docs/design/furnace.md 4.2 (timing and per-event randomisation); nuisances follow
5. Events are drawn from their own random stream, so renderer changes never move them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.config import CONDITIONS, SimConfig

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class ConditionEvent:
    """One abnormal condition: onset, smoothstep build-up, hold, smoothstep recovery."""

    condition: str
    onset_s: float
    buildup_s: float
    hold_s: float
    recovery_s: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_s(self) -> float:
        return self.onset_s + self.buildup_s

    @property
    def end_s(self) -> float:
        return self.onset_s + self.buildup_s + self.hold_s + self.recovery_s

    def severity(self, t: F64) -> F64:
        """Severity s(t) in [0, 1] at times `t` (seconds): 0 before onset and after the end."""
        up = _smoothstep((t - self.onset_s) / max(self.buildup_s, 1e-6))
        down_start = self.peak_s + self.hold_s
        down = 1.0 - _smoothstep((t - down_start) / max(self.recovery_s, 1e-6))
        s = np.minimum(up, down)
        s[(t < self.onset_s) | (t >= self.end_s)] = 0.0
        return s

    def as_dict(self) -> dict[str, Any]:
        return {
            "condition": self.condition,
            "onset_s": self.onset_s,
            "buildup_end_s": self.peak_s,
            "hold_end_s": self.peak_s + self.hold_s,
            "end_s": self.end_s,
            "params": _jsonable(self.params),
        }


@dataclass(frozen=True)
class Nuisance:
    """A normal-labelled process event that resembles part of a condition (docs/design/furnace.md
    5)."""

    kind: str  # power_cut | feeding | setpoint_step | venting | mist
    start_s: float
    end_s: float
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "params": _jsonable(self.params),
        }


def _smoothstep(x: F64) -> F64:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, np.ndarray):
            out[key] = value.tolist()
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


def _draw_condition(
    condition: str, onset: float, rng: np.random.Generator, room_s: float
) -> list[ConditionEvent]:
    """Draw one event (two for an overheating that escalates into an eruption)."""
    u = rng.uniform
    if condition == "semi_molten":
        n_spots = int(rng.integers(1, 3))
        params: dict[str, Any] = {
            "current_offset_frac": float(u(0.02, 0.06) * rng.choice([-1.0, 1.0])),
            "fluct_gain": float(u(1.1, 1.4)),
            "spots": [
                {
                    "u": float(u(0.15, 0.85)),
                    "v": float(u(0.2, 0.85)),
                    "shape_seed": int(rng.integers(2**31)),
                    "radius_px": float(u(6.0, 16.0)),
                    "peak_intensity": float(u(0.7, 1.2)),
                    "growth_power": float(u(0.6, 1.8)),
                }
                for _ in range(n_spots)
            ],
        }
        timing = (u(120, 900), u(60, 600), u(60, 300))
    elif condition == "overheating":
        params = {
            "current_excess_frac": float(u(0.05, 0.25)),
            "fluct_gain": float(u(1.3, 2.0)),
            "rim_glow_gain": float(u(1.1, 1.4)),
            "smoke_rate": float(u(0.05, 0.3)),
            "escalates": bool(u() < u(0.2, 0.5)),
        }
        timing = (u(60, 600), u(60, 600), u(60, 300))
    elif condition == "eruption":
        params = _eruption_params(rng)
        timing = (u(0.5, 2.0), u(5.0, 60.0), u(1.0, 4.0))
    elif condition == "abnormal_exhaust":
        params = {
            "burst_rate_per_min": float(u(2.0, 10.0)),
            "burst_amp_frac": float(u(0.05, 0.20)),
            "burst_gain": float(u(2.0, 3.0)),
            "smoke_density": float(u(0.3, 0.9)),
            "smoke_tint": float(u(0.0, 1.0)),
            "flare": float(u(0.4, 1.0)),
            "camera_lag_s": float(u(0.0, 1.0)),
        }
        timing = (10.0, u(30, 300), 10.0)
    elif condition == "electrode_breakage":
        params = {
            "phase": int(rng.integers(3)),
            "residual_frac": float(u(0.0, 0.10)),
            "rearc_rate_hz": float(u(0.0, 0.2)),
            "rearc_level_frac": float(u(0.1, 0.5)),
            "regulator_s": float(u(5.0, 30.0)),
            "cut_s": float(u(60.0, 300.0)),  # operator cuts power; electrode replaced
            "ramp_s": float(u(10.0, 60.0)),
        }
        timing = (0.5, u(30.0, 600.0), 0.0)
    else:  # pragma: no cover - guarded by the caller
        msg = f"unknown condition {condition!r}"
        raise ValueError(msg)
    buildup, hold, recovery = (float(x) for x in timing)
    scale = min(1.0, room_s / (buildup + hold + recovery))
    # Events that do not fit the episode are shortened, never dropped.
    event = ConditionEvent(
        condition, onset, buildup * scale, hold * scale, recovery * scale, params
    )
    events = [event]
    if condition == "overheating" and params["escalates"]:
        e_onset = event.peak_s + float(u(0.2, 0.9)) * event.hold_s
        e_params = _eruption_params(rng)
        dur = (float(u(0.5, 2.0)), float(u(5.0, 60.0)), float(u(1.0, 4.0)))
        events.append(ConditionEvent("eruption", e_onset, *dur, e_params))
    return events


def _eruption_params(rng: np.random.Generator) -> dict[str, Any]:
    u = rng.uniform
    return {
        "intensity": float(u(0.6, 1.0)),
        "arc_loss_phases": int(rng.integers(2, 4)),
        "surge_rate_hz": float(u(0.3, 1.0)),
        "ejecta_extent": float(u(0.1, 0.5)),
        "ejecta_dir": float(u(-0.6, 0.6)),
        "smoke_after_s": float(u(20.0, 90.0)),
    }


def draw_conditions(
    cfg: SimConfig, duration_s: float, rng: np.random.Generator
) -> list[ConditionEvent]:
    """Condition events of one episode: 0 with probability `event_free_fraction`, else 1-2."""
    if rng.uniform() < cfg.event_free_fraction:
        return []
    n_events = int(rng.integers(1, cfg.max_events + 1))
    events: list[ConditionEvent] = []
    cursor = cfg.lead_in_s
    for i in range(n_events):
        remaining = duration_s - cursor
        if remaining < 90.0:
            break
        condition = cfg.condition or str(rng.choice(CONDITIONS))
        # Leave room for the following events: the first event starts in the first part.
        share = 1.0 / (n_events - i)
        onset = cursor + float(rng.uniform(0.0, 0.4)) * remaining * share
        room = duration_s - onset - 5.0
        drawn = _draw_condition(condition, onset, rng, room)
        events.extend(drawn)
        last_end = max(e.end_s for e in drawn)
        if condition == "electrode_breakage":
            last_end += float(drawn[0].params["cut_s"] + drawn[0].params["ramp_s"])
        cursor = last_end + float(rng.uniform(60.0, 180.0))
    return [e for e in events if e.onset_s < duration_s - 5.0]


def draw_nuisances(
    duration_s: float, rng: np.random.Generator, *, power_cut_prob: float = 0.3
) -> list[Nuisance]:
    """Process nuisances labelled `normal`: feeding, power cuts, setpoint steps, venting."""
    out: list[Nuisance] = []
    t = float(rng.uniform(60.0, 300.0))
    while t < duration_s:  # feeding every 3-15 min, 10-60 s long
        dur = float(rng.uniform(10.0, 60.0))
        params = {
            "fluct_gain": float(rng.uniform(1.2, 1.6)),
            "dip_frac": float(rng.uniform(0.0, 0.05)),
        }
        out.append(Nuisance("feeding", t, min(t + dur, duration_s), params))
        t += dur + float(rng.uniform(180.0, 900.0))
    hours = duration_s / 3600.0
    n_steps = int(rng.poisson(1.5 * hours))  # operator setpoint steps, 0-3 per hour
    offset = 0.0
    for start in np.sort(rng.uniform(60.0, duration_s, size=n_steps)):
        # Operators move the setpoint and later back: a step away from the nominal setpoint
        # is followed by one towards it, so the offset stays within one step of nominal.
        sign = -np.sign(offset) if offset != 0.0 else float(rng.choice([-1.0, 1.0]))
        step = float(rng.uniform(500.0, 2000.0) * sign)
        step = -offset if offset != 0.0 and abs(step) > abs(offset) else step
        offset += step
        tau = float(rng.uniform(5.0, 20.0))
        params = {"step_a": step, "tau_s": tau}
        out.append(Nuisance("setpoint_step", float(start), float(start) + 5 * tau, params))
    for _ in range(int(rng.poisson(1.0 * hours))):  # normal venting, 0-2 per hour
        start = float(rng.uniform(60.0, duration_s))
        out.append(Nuisance("venting", start, start + float(rng.uniform(2.0, 6.0)), {}))
    if rng.uniform() < power_cut_prob:  # demand-limiting power cut of the whole furnace
        dur = float(np.exp(rng.uniform(np.log(10.0), np.log(300.0))))
        start = float(rng.uniform(150.0, max(151.0, duration_s - dur)))
        ramp = float(rng.uniform(10.0, 60.0))
        out.append(Nuisance("power_cut", start, start + dur, {"ramp_s": ramp}))
    return sorted(out, key=lambda n: n.start_s)


def draw_mist(
    duration_s: float,
    rng: np.random.Generator,
    *,
    rate_per_h: float,
    peak_range: tuple[float, float] = (0.3, 0.95),
) -> list[Nuisance]:
    """Water-mist episodes on the camera: 30 s-10 min each, peak opacity 0.3-0.95."""
    out: list[Nuisance] = []
    for _ in range(int(rng.poisson(rate_per_h * duration_s / 3600.0))):
        dur = float(np.exp(rng.uniform(np.log(30.0), np.log(600.0))))
        start = float(rng.uniform(0.0, duration_s))
        peak = float(rng.uniform(*peak_range))
        out.append(Nuisance("mist", start, min(start + dur, duration_s), {"peak": peak}))
    return out


def envelope(t: F64, start: float, end: float, ramp: float) -> F64:
    """Trapezoid in [0, 1] with smoothstep edges of `ramp` seconds."""
    up = _smoothstep((t - start) / max(ramp, 1e-6))
    down = 1.0 - _smoothstep((t - (end - ramp)) / max(ramp, 1e-6))
    return np.minimum(up, down)
