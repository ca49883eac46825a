"""Latent furnace state at 2 Hz and the three-phase electrode current it produces.

docs/design/furnace.md 7.2 (latent state) and 7.3 (current synthesis). The spectral shaping
reproduces the band shares of the public production log (section 2.1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from simulator.config import (
    BAND_EDGES_HZ,
    CLASS_INDEX,
    CLIP_A,
    CURRENT_RATE_HZ,
    GENERATOR_SHARES,
    FurnaceParams,
    SimConfig,
)
from simulator.events import ConditionEvent, Nuisance, envelope

F64 = NDArray[np.float64]


class CurrentOut(NamedTuple):
    """Current-side result of one episode. N samples at 2 Hz."""

    current: NDArray[np.float32]  # (N, 3) A
    action: NDArray[np.float32]  # (N, 3)
    setpoint: NDArray[np.float32]  # (N, 3) A
    plc: NDArray[np.uint8]  # (N, 4) power_on, feeding, exhaust, auto
    signature: F64  # (N,) condition signature in units of the fluctuation (vis >= 1)
    latent: dict[str, NDArray[np.float32]]  # 2 Hz latent state, for analysis only


def shaped_noise(n: int, rng: np.random.Generator, *, tilt: float = 1.0) -> F64:
    """Unit-variance Gaussian noise with the log's spectral band shares.

    Args:
        n: number of samples at 2 Hz.
        rng: random stream.
        tilt: multiplies the shares above 0.2 Hz (then renormalised).

    Returns:
        (n,) float64, zero mean, unit variance.
    """
    freqs = np.fft.rfftfreq(n, d=1.0 / CURRENT_RATE_HZ)
    density = np.zeros_like(freqs)
    for lo, hi, share in zip(BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:], GENERATOR_SHARES, strict=True):
        weight = share * (tilt if lo >= 0.2 else 1.0)
        in_band = (freqs >= lo) & (freqs < hi) if hi < 1.0 else (freqs >= lo)
        density[in_band] = weight / (hi - lo)
    density[0] = 0.0
    spectrum = np.fft.rfft(rng.standard_normal(n)) * np.sqrt(density)
    x = np.fft.irfft(spectrum, n=n)
    x -= x.mean()
    return x / max(float(x.std()), 1e-12)


def _ou(n: int, sigma: float, tau_s: float, rng: np.random.Generator) -> F64:
    """Ornstein-Uhlenbeck path at 2 Hz with stationary std `sigma`."""
    a = float(np.exp(-1.0 / (CURRENT_RATE_HZ * tau_s)))
    steps = rng.standard_normal(n) * sigma * np.sqrt(1.0 - a * a)
    out = np.empty(n)
    x = float(rng.standard_normal()) * sigma
    for k in range(n):
        x = a * x + steps[k]
        out[k] = x
    return out


def first_order(x: F64, tau_s: float) -> F64:
    """Causal first-order low-pass of a 2 Hz signal (rim glow after power changes)."""
    a = float(np.exp(-1.0 / (CURRENT_RATE_HZ * tau_s)))
    out = np.empty_like(x)
    y = float(x[0])
    for k in range(x.shape[0]):
        y = a * y + (1.0 - a) * float(x[k])
        out[k] = y
    return out


def _pulse_train(
    t: F64, start: float, end: float, rate_per_min: float, rng: np.random.Generator
) -> tuple[F64, F64]:
    """Exhaust bursts: half-sine pulses of 1-6 s, random sign. Returns (shape, |shape|)."""
    signed = np.zeros_like(t)
    n_bursts = max(1, int(rng.poisson(rate_per_min * (end - start) / 60.0)))
    for _ in range(n_bursts):
        b0 = float(rng.uniform(start, end))
        dur = float(rng.uniform(1.0, 6.0))
        sign = float(rng.choice([-1.0, 1.0]))
        inside = (t >= b0) & (t < b0 + dur)
        signed[inside] += sign * np.sin(np.pi * (t[inside] - b0) / dur)
    return signed, np.minimum(np.abs(signed), 1.0)


def synthesize(
    fp: FurnaceParams,
    cfg: SimConfig,
    events: list[ConditionEvent],
    nuisances: list[Nuisance],
    t: F64,
    rng: np.random.Generator,
) -> CurrentOut:
    """Latent state and three-phase current of one episode.

    Args:
        fp: furnace parameters.
        cfg: simulation config (evidence gains).
        events: condition events.
        nuisances: process nuisances (feeding, power cuts, setpoint steps, venting).
        t: (N,) sample times in seconds at 2 Hz.
        rng: the episode's current stream.

    Returns:
        CurrentOut with current (N, 3) clipped to [0, 20 kA] and the latent state.
    """
    n = t.shape[0]
    offsets = np.asarray(fp.phase_offsets)
    base = fp.setpoint_a * (1.0 + offsets)  # (3,)
    drift = np.stack([_ou(n, fp.drift_sigma_a, fp.drift_tau_s, rng) for _ in range(3)], 1)
    i_set = base[None, :] + drift  # (N, 3)
    d_i = np.zeros((n, 3))
    gain = np.ones((n, 3))
    power = np.ones(n)
    ok = np.ones((n, 3))
    feeding = np.zeros(n)
    exhaust_bit = np.zeros(n)
    venting = np.zeros(n)
    signature = np.zeros(n)
    melt = np.zeros(n)
    gas = np.zeros(n)
    sigma = fp.sigma_frac * base  # (3,)

    for nz in nuisances:
        if nz.kind == "setpoint_step":
            after = t >= nz.start_s
            step = float(nz.params["step_a"])
            i_set[after] += step
            # The regulator needs a few seconds to track the new setpoint.
            d_i[after] -= step * np.exp(-(t[after] - nz.start_s) / nz.params["tau_s"])[:, None]
        elif nz.kind == "feeding":
            env = envelope(t, nz.start_s, nz.end_s, 3.0)
            feeding = np.maximum(feeding, (env > 0.5).astype(float))
            d_i -= (nz.params["dip_frac"] * env)[:, None] * base[None, :]
            gain *= 1.0 + (nz.params["fluct_gain"] - 1.0) * env[:, None]
        elif nz.kind == "venting":
            env = envelope(t, nz.start_s, nz.end_s, 1.0)
            exhaust_bit = np.maximum(exhaust_bit, (env > 0).astype(float))
            venting = np.maximum(venting, env)
            d_i += (0.02 * env)[:, None] * base[None, :]
        elif nz.kind == "power_cut":
            _apply_cut(power, t, nz.start_s, nz.end_s, float(nz.params["ramp_s"]))

    arc = np.ones((n, 3))  # multiplicative arc losses during eruptions
    surge = np.zeros((n, 3))
    overlay: list[tuple[int, F64]] = []  # (phase, residual current) of broken electrodes
    for ev in events:
        s = ev.severity(t)
        gc = cfg.gain(ev.condition, "current")
        p = ev.params
        if ev.condition == "semi_molten":
            off = p["current_offset_frac"] * gc
            d_i += (off * s)[:, None] * base[None, :]
            gain *= 1.0 + (p["fluct_gain"] - 1.0) * gc * s[:, None]
            sig = s * (abs(off) / fp.sigma_frac + (p["fluct_gain"] - 1.0) * gc)
        elif ev.condition == "overheating":
            exc = p["current_excess_frac"] * gc
            d_i += (exc * s)[:, None] * base[None, :]
            gain *= 1.0 + (p["fluct_gain"] - 1.0) * gc * s[:, None]
            melt = np.maximum(melt, s)
            sig = s * (exc / fp.sigma_frac + (p["fluct_gain"] - 1.0) * gc)
        elif ev.condition == "eruption":
            amp = p["intensity"] * gc
            gain *= 1.0 + 2.5 * amp * s[:, None]
            gas = np.maximum(gas, s)
            melt = np.maximum(melt, s)
            _eruption_transients(arc, surge, t, s * amp, p, rng)
            sig = 5.0 * amp * s
        elif ev.condition == "abnormal_exhaust":
            env = envelope(t, ev.onset_s, ev.end_s, 10.0)
            signed, mag = _pulse_train(t, ev.onset_s, ev.end_s, p["burst_rate_per_min"], rng)
            signed *= env
            mag *= env
            amp = p["burst_amp_frac"] * gc
            d_i += (amp * signed)[:, None] * base[None, :]
            gain *= 1.0 + (p["burst_gain"] - 1.0) * gc * mag[:, None]
            gas = np.maximum(gas, mag)
            sig = env * (amp / fp.sigma_frac + (p["burst_gain"] - 1.0) * gc)
        else:  # electrode_breakage: one phase lost at a single-sample step
            phase = int(p["phase"])
            active = (t >= ev.onset_s) & (t < ev.end_s)
            ok[active, phase] = 0.0
            others = [q for q in range(3) if q != phase]
            since = np.where(active, t - ev.onset_s, np.inf)
            # Floating star point: the other two carry the same current in series at ~0.87
            # of the previous level until the regulator reacts.
            sag = (1.0 - np.sqrt(3.0) / 2.0) * np.exp(-since / p["regulator_s"]) * gc
            for q in others:
                d_i[:, q] -= sag * i_set[:, q]
            residual = _breakage_residual(t, active, p, float(base[phase]), rng)
            overlay.append((phase, residual))
            _apply_cut(power, t, ev.end_s, ev.end_s + p["cut_s"], float(p["ramp_s"]))
            sig = 10.0 * active.astype(float) * min(gc, 1.0)
        signature = np.maximum(signature, sig)

    shared = shaped_noise(n, rng, tilt=fp.tilt)
    x = np.stack([shaped_noise(n, rng, tilt=fp.tilt) for _ in range(3)], 1)
    x = np.sqrt(fp.rho) * shared[:, None] + np.sqrt(1.0 - fp.rho) * x  # (N, 3)
    current = i_set + d_i + gain * sigma[None, :] * x
    current = current * arc + surge
    _apply_dips(current, i_set, power, fp, rng)
    for phase, residual in overlay:
        lost = ok[:, phase] == 0
        others = [q for q in range(3) if q != phase]
        # With one electrode open, the other two carry one series current: equal magnitudes
        # (plus 1 % transducer noise), whatever the regulator does to its level.
        series = current[:, others].mean(1)
        for q in others:
            noisy = series * (1.0 + 0.01 * rng.standard_normal(n))
            current[:, q] = np.where(lost, noisy, current[:, q])
        current[:, phase] = np.where(lost, residual, current[:, phase])
    current *= power[:, None]
    current = np.clip(current, 0.0, CLIP_A)
    action = np.clip((current - i_set) / fp.action_scale_a, -10.0, 10.0)
    plc = np.stack([power > 0.5, feeding > 0, exhaust_bit > 0, np.ones(n, bool)], 1)
    latent = {
        "power": power,
        "i_set": i_set,
        "ok": ok,
        "d_i": d_i,
        "fluct_gain": gain,
        "melt_rate": melt,
        "gas": gas,
        "feeding": feeding,
        "venting": venting,
    }
    return CurrentOut(
        current=current.astype(np.float32),
        action=action.astype(np.float32),
        setpoint=i_set.astype(np.float32),
        plc=plc.astype(np.uint8),
        signature=signature,
        latent={k: v.astype(np.float32) for k, v in latent.items()},
    )


def _apply_cut(power: F64, t: F64, start: float, end: float, ramp_s: float) -> None:
    """All phases to 0 within one sample, back over a linear ramp of `ramp_s` seconds."""
    level = np.ones_like(t)
    level[(t >= start) & (t < end)] = 0.0
    ramping = (t >= end) & (t < end + ramp_s)
    level[ramping] = (t[ramping] - end) / ramp_s
    np.minimum(power, level, out=power)


def _eruption_transients(
    arc: F64, surge: F64, t: F64, s: F64, p: dict[str, float], rng: np.random.Generator
) -> None:
    """Simultaneous arc losses on 2-3 phases and surges to the clip while s is high."""
    live = np.flatnonzero(s > 0.3)
    if live.size == 0:
        return
    n_phases = int(p["arc_loss_phases"])
    rate = float(p["surge_rate_hz"])
    n_hits = max(1, int(rng.poisson(rate * live.size / CURRENT_RATE_HZ)))
    for k in rng.choice(live, size=min(n_hits, live.size), replace=False):
        length = int(rng.integers(1, 4))
        sl = slice(int(k), min(int(k) + length, t.shape[0]))
        if rng.uniform() < 0.5:  # arc loss on several phases at once
            phases = rng.choice(3, size=n_phases, replace=False)
            for q in phases:
                arc[sl, q] = np.minimum(arc[sl, q], rng.uniform(0.0, 0.35))
        else:  # surge towards the clip
            surge[sl, :] += rng.uniform(3000.0, 9000.0) * float(s[int(k)])


def _breakage_residual(
    t: F64, active: NDArray[np.bool_], p: dict[str, float], level: float, rng: np.random.Generator
) -> F64:
    """Residual current of a broken electrode: 0-10 % with occasional re-arcs up to 50 %."""
    noise: F64 = 1.0 + 0.3 * rng.standard_normal(size=(t.shape[0],))
    residual = noise * (p["residual_frac"] * level)
    idx = np.flatnonzero(active)
    if idx.size:
        n_rearcs = int(rng.poisson(p["rearc_rate_hz"] * idx.size / CURRENT_RATE_HZ))
        for k in rng.choice(idx, size=min(n_rearcs, idx.size), replace=False):
            length = int(rng.integers(1, 3))
            spike = p["rearc_level_frac"] * level * rng.uniform(0.3, 1.0)
            residual[int(k) : int(k) + length] += spike
    out: F64 = np.maximum(residual, 0.0)
    return out


def _apply_dips(
    current: F64, i_set: F64, power: F64, fp: FurnaceParams, rng: np.random.Generator
) -> None:
    """Brief single-phase dips to 15-60 % of the setpoint for 0.5-3 s, never two at once."""
    n = current.shape[0]
    busy = np.zeros(n, bool)
    expected = fp.dip_rate_per_10min * n / (CURRENT_RATE_HZ * 600.0)
    for phase in rng.permutation(3):
        for start in np.sort(rng.integers(0, n, size=int(rng.poisson(expected)))):
            length = int(rng.integers(1, 7))
            sl = slice(int(start), min(int(start) + length, n))
            if busy[sl].any() or (power[sl] < 1.0).any():
                continue
            busy[max(0, int(start) - 2) : sl.stop + 2] = True
            current[sl, phase] = i_set[sl, phase] * rng.uniform(0.15, 0.6)


def labels_from_events(
    events: list[ConditionEvent], t: F64, s_label: float
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Per-sample class index and severity. An eruption outranks the overheating around it."""
    label = np.zeros(t.shape[0], np.int8)
    severity = np.zeros(t.shape[0])
    best = np.zeros(t.shape[0])
    for ev in events:
        s = ev.severity(t)
        rank = s + (1.0 if ev.condition == "eruption" else 0.0)
        take = (s >= s_label) & (rank > best)
        label[take] = CLASS_INDEX[ev.condition]
        best = np.where(take, rank, best)
        severity = np.maximum(severity, s)
    return label, severity.astype(np.float32)
