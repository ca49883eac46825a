"""One furnace episode: domain-randomised parameters, events, current and camera from one state.

Random streams follow docs/design/furnace.md 7.7: SeedSequence(master) -> furnace -> episode ->
independent children for events, current, camera and faults, so changing the renderer never moves
the currents and the same seed gives byte-identical arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.camera import random_camera_params, render_frames
from simulator.config import (
    CLASS_NAMES,
    CURRENT_RATE_HZ,
    FRAME_PX,
    SIM_VERSION,
    FurnaceParams,
    SimConfig,
)
from simulator.events import (
    ConditionEvent,
    Nuisance,
    draw_conditions,
    draw_mist,
    draw_nuisances,
    envelope,
)
from simulator.faults import draw_faults
from simulator.physics import first_order, labels_from_events, synthesize
from simulator.scene import HotSpot, SceneState
from simulator.types import Episode, FaultEvent

F64 = NDArray[np.float64]
EPOCH_2026 = 1767225600  # 2026-01-01T00:00:00Z; episodes start at whole seconds after it


def random_furnace_params(
    furnace_id: str, rng: np.random.Generator, *, profile: str = "default"
) -> FurnaceParams:
    """Draw one furnace's electrical and camera parameters (docs/design/furnace.md 7.6).

    Profiles: `default` draws the training ranges; `reference` pins the setpoint and the
    fluctuation level to the public log's (14.6-15.3 kA, 10-12 %) so its statistics compare
    figure by figure; `out_of_range` draws setpoints of 9-11 kA and a camera rolled up to
    15 degrees (robustness only, never training).
    """
    u = rng.uniform
    sigma_range = (0.085, 0.13)
    if profile == "reference":
        setpoint = u(14600.0, 15300.0)
        sigma_range = (0.10, 0.12)
    elif profile == "out_of_range":
        setpoint = u(9000.0, 11000.0)
    else:
        setpoint = u(11000.0, 16000.0)
    return FurnaceParams(
        furnace_id=furnace_id,
        setpoint_a=float(setpoint),
        phase_offsets=(float(u(-0.04, 0.04)), float(u(-0.04, 0.04)), float(u(-0.04, 0.04))),
        drift_sigma_a=float(u(200.0, 500.0)),
        drift_tau_s=float(u(300.0, 1200.0)),
        sigma_frac=float(u(*sigma_range)),
        rho=float(u(0.3, 0.5)),
        tilt=float(u(0.7, 1.4)),
        dip_rate_per_10min=float(u(2.5, 5.5)),
        action_scale_a=float(u(620.0, 670.0)),
        camera=random_camera_params(rng, profile=profile),
    )


def simulate_episode(
    fp: FurnaceParams,
    cfg: SimConfig,
    seed: np.random.SeedSequence,
    *,
    name: str,
    start_epoch: int = EPOCH_2026,
    render: bool = True,
    events: Sequence[ConditionEvent] | None = None,
    faults: Sequence[FaultEvent] | None = None,
) -> Episode:
    """Simulate one episode of one furnace.

    Args:
        fp: furnace parameters (see `random_furnace_params`).
        cfg: simulation config.
        seed: this episode's SeedSequence (spawned from the furnace's).
        name: episode name (FMF-Benchmark NAME: no dots).
        start_epoch: Unix seconds of t = 0.
        render: False skips the camera (zero frames), for fast current-only statistics.
        events: condition events to use instead of the random draw (a scenario; `()` for a
            furnace without conditions). The draw still runs and is discarded, so nuisances,
            currents and frames come from the same random streams either way.
        faults: sensor faults to use instead of the random draw (`cfg.faults` is then ignored).

    Returns:
        The episode with clean observations, labels and fault events.
    """
    if "." in name:
        msg = f"episode name {name!r} must not contain dots (FMF-Benchmark keeps text before '.')"
        raise ValueError(msg)
    ev_ss, cur_ss, cam_ss, fault_ss, mist_ss = seed.spawn(5)
    duration_s = cfg.minutes * 60.0
    n = int(round(duration_s * CURRENT_RATE_HZ))
    t_cur = np.arange(n) / CURRENT_RATE_HZ
    n_frames = int(np.floor(duration_s * cfg.camera_fps))
    t_frame = np.arange(n_frames) / cfg.camera_fps

    ev_rng = np.random.default_rng(ev_ss)
    drawn = draw_conditions(cfg, duration_s, ev_rng)
    conditions = drawn if events is None else sorted(events, key=lambda e: e.onset_s)
    nuisances = draw_nuisances(duration_s, ev_rng)
    mist_rng = np.random.default_rng(mist_ss)
    peak = (0.95, 1.0) if cfg.profile == "out_of_range" else (0.3, 0.95)
    mist_events = draw_mist(
        duration_s, mist_rng, rate_per_h=float(mist_rng.uniform(0.0, 6.0)), peak_range=peak
    )
    out = synthesize(fp, cfg, conditions, nuisances, t_cur, np.random.default_rng(cur_ss))
    label_cur, sev_cur = labels_from_events(conditions, t_cur, cfg.s_label)
    vis_cur = (label_cur > 0) & (out.signature >= 1.0)

    label_frame, sev_frame = labels_from_events(conditions, t_frame, cfg.s_label)
    scene, cam_signature = _scene(fp, cfg, conditions, mist_events, out.latent, t_cur, t_frame)
    if render:
        rendered = render_frames(scene, fp.camera, np.random.default_rng(cam_ss))
        frames, mask = rendered.frames, rendered.mask
        spot_vis = rendered.visibility.astype(np.float64) / 0.25
    else:
        frames = np.zeros((n_frames, FRAME_PX, FRAME_PX, 3), np.uint8)
        mask = np.zeros((n_frames, FRAME_PX, FRAME_PX), np.uint8)
        spot_vis = np.zeros(n_frames)
    semi = label_frame == CLASS_NAMES.index("semi_molten")
    cam_signature = np.where(semi, np.maximum(cam_signature, spot_vis), cam_signature)
    vis_frame = (label_frame > 0) & (cam_signature >= 1.0)

    fault_list: list[FaultEvent] = []
    if faults is not None:
        fault_list = sorted(faults, key=lambda f: f.start_s)
    elif cfg.faults:
        fault_list = draw_faults(
            duration_s, np.random.default_rng(fault_ss), rate_per_h=cfg.fault_rate_per_h
        )
    meta: dict[str, Any] = {
        "simulator_version": SIM_VERSION,
        "seed_entropy": str(seed.entropy),
        "seed_spawn_key": list(seed.spawn_key),
        "furnace": _params_dict(fp),
        "config": _params_dict(cfg),
        "duration_s": duration_s,
        "camera_fps": cfg.camera_fps,
        "class_names": list(CLASS_NAMES),
        "mist": [m.as_dict() for m in mist_events],
    }
    return Episode(
        name=name,
        furnace_id=fp.furnace_id,
        start_epoch=float(start_epoch),
        t_cur=t_cur,
        current=out.current,
        action=out.action,
        plc=out.plc,
        setpoint=out.setpoint,
        label_cur=label_cur,
        sev_cur=sev_cur,
        vis_cur=vis_cur,
        t_frame=t_frame,
        frames=frames,
        mask=mask,
        label_frame=label_frame,
        sev_frame=sev_frame,
        vis_frame=vis_frame,
        latent=out.latent,
        events=[e.as_dict() for e in conditions],
        nuisances=[nz.as_dict() for nz in nuisances],
        faults=fault_list,
        meta=meta,
    )


def _scene(
    fp: FurnaceParams,
    cfg: SimConfig,
    events: list[ConditionEvent],
    mist_events: list[Nuisance],
    latent: dict[str, NDArray[np.float32]],
    t_cur: F64,
    t_frame: F64,
) -> tuple[SceneState, F64]:
    """Camera-side latent state at frame times, and the camera signature (vis >= 1)."""
    tf = t_frame
    power_glow = first_order(latent["power"].astype(np.float64), tau_s=60.0)
    glow_gain = np.ones_like(tf)
    flame = np.ones_like(tf)
    smoke = np.zeros_like(tf)
    flare = np.zeros_like(tf)
    ejecta = np.zeros_like(tf)
    extent = np.full_like(tf, 0.3)
    direction = np.zeros_like(tf)
    signature = np.zeros_like(tf)
    spots: list[HotSpot] = []
    flicker = fp.camera.flicker_amp
    mist = np.full_like(tf, fp.camera.mist_base)
    for m in mist_events:
        ramp = min(20.0, (m.end_s - m.start_s) / 3)
        mist = np.maximum(mist, m.params["peak"] * envelope(tf, m.start_s, m.end_s, ramp))
    clear = 1.0 - mist

    for ev in events:
        s = ev.severity(tf)
        g = cfg.gain(ev.condition, "camera")
        p = ev.params
        if ev.condition == "semi_molten":
            for spot in p["spots"]:
                sev = np.clip(g * s ** spot["growth_power"], 0.0, 1.5)
                spots.append(
                    HotSpot(
                        u=spot["u"],
                        v=spot["v"],
                        shape_seed=spot["shape_seed"],
                        radius_px=spot["radius_px"],
                        peak_intensity=spot["peak_intensity"],
                        severity=sev,
                    )
                )
        elif ev.condition == "overheating":
            glow_gain = np.maximum(glow_gain, 1.0 + (p["rim_glow_gain"] - 1.0) * g * s)
            flame = np.maximum(flame, 1.0 + 0.3 * g * s)
            smoke = np.maximum(smoke, p["smoke_rate"] * g * s)
            sig = s * g * (p["rim_glow_gain"] - 1.0) / (2.0 * flicker) * clear
            signature = np.maximum(signature, sig)
        elif ev.condition == "eruption":
            amp = p["intensity"] * g
            ejecta = np.maximum(ejecta, np.clip(amp * s, 0.0, 1.0))
            extent = np.where(s > 0, p["ejecta_extent"], extent)
            direction = np.where(s > 0, p["ejecta_dir"], direction)
            flame = np.maximum(flame, 1.0 + 1.5 * amp * s)
            after = (tf >= ev.end_s) & (tf < ev.end_s + 4 * p["smoke_after_s"])
            smoke_after = np.zeros_like(tf)
            smoke_after[after] = 0.8 * amp * np.exp(-(tf[after] - ev.end_s) / p["smoke_after_s"])
            smoke = np.maximum(smoke, np.maximum(0.6 * amp * s, smoke_after))
            signature = np.maximum(signature, 5.0 * amp * s * (1.0 - 0.5 * mist))
        elif ev.condition == "abnormal_exhaust":
            # Bursts seen on camera follow the current's gas latent with a small lag.
            lagged = np.interp(tf - p["camera_lag_s"], t_cur, latent["gas"].astype(np.float64))
            env = envelope(tf, ev.onset_s, ev.end_s, 10.0)
            smoke = np.maximum(smoke, g * p["smoke_density"] * np.maximum(lagged, 0.3 * env))
            flare = np.maximum(flare, g * p["flare"] * lagged)
            signature = np.maximum(signature, 3.0 * g * p["smoke_density"] * env * clear)

    venting = np.interp(tf, t_cur, latent["venting"].astype(np.float64))
    smoke = np.maximum(smoke, 0.25 * venting)
    flare = np.maximum(flare, 0.3 * venting)
    dust = 0.6 * np.interp(tf, t_cur, latent["feeding"].astype(np.float64))
    glow = np.interp(tf, t_cur, power_glow)
    scene = SceneState(
        t=tf,
        rim_glow=glow * glow_gain,
        flame=glow * flame,
        smoke=np.clip(smoke, 0.0, 1.0),
        flare=np.clip(flare, 0.0, 1.0),
        dust=np.clip(dust, 0.0, 1.0),
        ejecta=ejecta,
        ejecta_extent=extent,
        ejecta_dir=direction,
        mist=np.clip(mist, 0.0, 1.0),
        hotspots=tuple(spots),
    )
    return scene, signature


def _params_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = asdict(obj)
    return out


def episode_seeds(
    master_seed: int, n_furnaces: int, episodes_per_furnace: int
) -> list[tuple[np.random.SeedSequence, list[np.random.SeedSequence]]]:
    """SeedSequence(master) -> one child per furnace -> (furnace params seed, episode seeds)."""
    out = []
    for furnace_ss in np.random.SeedSequence(master_seed).spawn(n_furnaces):
        params_ss, *episode_ss = furnace_ss.spawn(1 + episodes_per_furnace)
        out.append((params_ss, episode_ss))
    return out
