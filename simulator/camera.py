"""Numpy-only renderer of the furnace-shell camera: RGB frames, hot-spot masks and visibility.

Compositing order and appearance follow docs/design/furnace.md 3, 4.1, 5 and 7.4; the per-furnace
static layers (shell, rim, flames, pose grid, drifting textures) live in `simulator._render`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from simulator._render import (
    F32,
    F64,
    I64,
    N_FLARES,
    RAMP_MAX,
    TEX_PX,
    SpotShape,
    StaticLayers,
    build_layers,
    incandescence_lut,
    spot_shape,
)
from simulator.config import FRAME_PX, CameraParams
from simulator.scene import SceneState

PROFILES = ("default", "reference", "out_of_range")
FLICKER_TAU_S = 0.3  # correlation time of flame flicker (independent frames at 2 fps)
# ejecta particles per frame at eruption intensity 1 (docs/design/furnace.md 4.2)
MAX_PARTICLES = 200
STREAK = ((0.0, 1.0), (0.05, 0.6), (0.1, 0.35))  # (time lag, weight) of each particle streak
PARTICLE_RGB = np.array([1.0, 0.8, 0.5], dtype=np.float32)
SMOKE_ALPHA = 0.85  # peak smoke opacity at density 1
DUST_ALPHA = 0.8  # peak dust opacity at feeding level 1


class RenderOutput(NamedTuple):
    """Rendered frames of one scene, F frames of H = W = frame_px pixels."""

    frames: NDArray[np.uint8]  # (F, H, W, 3) RGB
    mask: NDArray[np.uint8]  # (F, H, W) hot-spot intensity > threshold, before mist, posed
    visibility: NDArray[np.float32]  # (F,) hot-spot contrast after mist in [0, 1]


def random_camera_params(rng: np.random.Generator, *, profile: str = "default") -> CameraParams:
    """Draw one furnace's camera pose, exposure and look (docs/design/furnace.md 7.6).

    Args:
        rng: the furnace's parameter stream.
        profile: "default" and "reference" draw the training ranges; "out_of_range" rolls the
            camera up to 15 degrees (its peak mist is drawn by the caller).

    Returns:
        CameraParams with every field drawn.

    Raises:
        ValueError: for an unknown profile.
    """
    if profile not in PROFILES:
        msg = f"unknown profile {profile!r}: use {', '.join(PROFILES)}"
        raise ValueError(msg)
    max_roll = 15.0 if profile == "out_of_range" else 8.0
    shift = rng.uniform(-8.0, 8.0, 2)
    scale = rng.uniform(0.85, 1.15)
    roll = rng.uniform(-max_roll, max_roll)
    gain = rng.uniform(0.6, 1.4)
    gamma = rng.uniform(0.8, 1.25)
    wb = rng.uniform(0.9, 1.1, 3)
    noise = rng.uniform(1.0, 4.0)
    seed = int(rng.integers(0, 2**31 - 1))
    grey = rng.uniform(0.15, 0.26)
    tint = rng.uniform(-0.06, 0.06)  # warm or cool steel
    return CameraParams(
        shift_px=(float(shift[0]), float(shift[1])),
        scale=float(scale),
        roll_deg=float(roll),
        gain=float(gain),
        gamma=float(gamma),
        white_balance=(float(wb[0]), float(wb[1]), float(wb[2])),
        noise_dn=float(noise),
        texture_seed=seed,
        shell_rgb=(float(grey * (1 + tint)), float(grey), float(grey * (1 - 1.5 * tint))),
        shell_width=float(rng.uniform(0.6, 0.9)),
        seam_spacing_px=float(rng.uniform(10.0, 20.0)),
        rim_rows=float(rng.uniform(0.0, 0.2)),
        mist_base=float(rng.uniform(0.0, 0.3)),
        flicker_amp=float(rng.uniform(0.02, 0.15)),
    )


@dataclass(frozen=True)
class _Plan:
    """Everything a chunk needs that is computed once per scene."""

    layers: StaticLayers
    spots: tuple[SpotShape, ...]
    coef: F32  # (F, L) weights of the linear layers
    exposure: F32  # (F, 3) flicker * gain * white balance * white_level
    mist: F32  # (F,) veil opacity level
    particles: tuple[I64, I64, F32]  # ejecta samples: frame, pixel (y * W + x), brightness
    glow_rgb: F32  # (3, n) incandescence ramp, channel-first
    glow_luma: F32  # (n,)
    gamma: np.float32  # camera response exponent
    white_level: np.float32  # exposure value that saturates: 255 ** (1 / gamma)
    noise_dn: F32  # (2**16,) Gaussian quantiles times the sensor sigma, indexed by uint16 draws


def render_frames(
    scene: SceneState,
    cam: CameraParams,
    rng: np.random.Generator,
    *,
    frame_px: int = FRAME_PX,
    chunk: int = 256,
    mask_threshold: float = 0.25,
) -> RenderOutput:
    """Render the shell camera for every frame of a scene.

    Output does not depend on `chunk`. Randomness: `rng` (flicker, flame and flare jitter,
    ejecta particles, sensor noise, in that order) and textures seeded from
    `cam.texture_seed` and each hot spot's `shape_seed`.

    Args:
        scene: latent camera state at F frame times.
        cam: this furnace's camera parameters.
        rng: the episode's camera stream.
        frame_px: output size H = W.
        chunk: frames rendered together (memory ~ chunk * H * W * 3 * 4 bytes per buffer).
        mask_threshold: hot-spot intensity from which a pixel is in the mask.

    Returns:
        RenderOutput(frames (F, H, W, 3) uint8, mask (F, H, W) uint8, visibility (F,) float32).

    Raises:
        ValueError: for inconsistent scene arrays or non-positive sizes.
    """
    n = scene.n_frames
    _check(scene, frame_px, chunk)
    plan = _plan(scene, cam, rng, frame_px)
    out = RenderOutput(
        frames=np.empty((n, frame_px, frame_px, 3), dtype=np.uint8),
        mask=np.zeros((n, frame_px, frame_px), dtype=np.uint8),
        visibility=np.zeros(n, dtype=np.float32),
    )
    for s in range(0, n, chunk):
        _render_chunk(plan, scene, rng, slice(s, min(n, s + chunk)), out, mask_threshold)
    return out


def _check(scene: SceneState, frame_px: int, chunk: int) -> None:
    """Raise ValueError unless every scene array has shape (F,) and the sizes are sane."""
    if frame_px < 8 or chunk < 1:
        msg = f"frame_px must be >= 8 and chunk >= 1, got {frame_px} and {chunk}"
        raise ValueError(msg)
    n = scene.n_frames
    names = ("rim_glow", "flame", "smoke", "flare", "dust", "ejecta", "ejecta_extent")
    for name in (*names, "ejecta_dir", "mist"):
        if getattr(scene, name).shape != (n,):
            msg = f"scene.{name} has shape {getattr(scene, name).shape}, expected ({n},)"
            raise ValueError(msg)
    for spot in scene.hotspots:
        if spot.severity.shape != (n,):
            msg = f"hot-spot severity has shape {spot.severity.shape}, expected ({n},)"
            raise ValueError(msg)


def _plan(scene: SceneState, cam: CameraParams, rng: np.random.Generator, px: int) -> _Plan:
    """Static layers and all per-frame scalars; draws the non-noise randomness from `rng`."""
    n = scene.n_frames
    layers = build_layers(cam, px)
    # Flicker: brightness, RGB tint and flame-mix jitter, AR(1) over frame times.
    z = rng.standard_normal((n, 5))
    if n > 1:
        rho = np.exp(-np.clip(np.diff(scene.t), 0.0, None) / FLICKER_TAU_S)
        keep = np.sqrt(1.0 - rho**2)
        for i in range(1, n):
            z[i] = rho[i - 1] * z[i - 1] + keep[i - 1] * z[i]
    flare_w = rng.random((n, N_FLARES)) ** 3
    flare_w *= 2.0 / (flare_w.sum(axis=1, keepdims=True) + 1e-6)
    bright = 1.0 + cam.flicker_amp * np.clip(z[:, 0], -2.5, 2.5)
    tint = 1.0 + 0.3 * cam.flicker_amp * np.clip(z[:, 1:4], -2.5, 2.5)
    wb = np.asarray(cam.white_balance)
    white = 255.0 ** (1.0 / cam.gamma)
    exposure = np.clip(bright[:, None] * tint, 0.3, None) * cam.gain * wb * white
    mix = 0.5 + 0.5 * np.tanh(z[:, 4])
    coef = np.column_stack(
        [
            np.ones(n),
            np.clip(scene.rim_glow, 0.0, None),
            scene.flame * mix,
            scene.flame * (1 - mix),
            scene.flare[:, None] * flare_w,
        ]
    )
    rgb, luma = incandescence_lut()
    return _Plan(
        layers=layers,
        spots=tuple(spot_shape(h, cam, layers.pose, px) for h in scene.hotspots),
        coef=coef.astype(np.float32),
        exposure=exposure.astype(np.float32),
        mist=np.clip(np.maximum(scene.mist, cam.mist_base), 0.0, 1.0).astype(np.float32),
        particles=_particles(scene, layers, rng, px),
        glow_rgb=np.ascontiguousarray(rgb.T),
        glow_luma=luma,
        gamma=np.float32(cam.gamma),
        white_level=np.float32(white),
        noise_dn=(_normal_quantiles() * cam.noise_dn + 0.5).astype(np.float32),
    )


@functools.cache
def _normal_quantiles() -> F64:
    """(2**16,) standard normal quantiles at (k + 0.5) / 2**16: uint16 draws -> N(0, 1)."""
    z = np.linspace(-6.0, 6.0, 24001)
    cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z])
    out: F64 = np.interp((np.arange(2**16) + 0.5) / 2**16, cdf, z)
    return out


def _particles(
    scene: SceneState, layers: StaticLayers, rng: np.random.Generator, px: int
) -> tuple[I64, I64, F32]:
    """Ejecta: ballistic particles launched from the rim, drawn as short streaks.

    Returns:
        (frame (M,), pixel (M,) as y * W + x, brightness (M,)), sorted by frame.
    """
    active = np.flatnonzero(scene.ejecta > 0)
    counts = np.rint(MAX_PARTICLES * np.clip(scene.ejecta[active], 0.0, 1.0)).astype(np.int64)
    frame = np.repeat(active, counts)
    r = rng.random((frame.size, 5))
    reach = scene.ejecta_extent[frame] * FRAME_PX  # how far the spray gets, scene px
    theta = scene.ejecta_dir[frame] + (r[:, 1] - 0.5) * 2.4  # 0 = up, +-69 deg spread
    speed = reach * (0.4 + 0.6 * r[:, 2])
    x0 = FRAME_PX / 2 + layers.shell_half_width * 0.8 * (2 * r[:, 0] - 1)
    tau = r[:, 3]
    xs, ys, ws = [], [], []
    for lag, weight in STREAK:
        tt = np.clip(tau - lag, 0.0, None)
        x = x0 + 1.8 * speed * tt * np.sin(theta)
        y = layers.rim_y - speed * tt * np.cos(theta) + 1.6 * reach * tt**2  # gravity
        xo, yo = layers.pose.to_output_px(x, y)
        xs.append(np.floor(xo))
        ys.append(np.floor(yo))
        ws.append(weight * (0.5 + 2.5 * r[:, 4] ** 2))  # from orange sparks to white blobs
    xi, yi, w = (np.stack(a, axis=1).ravel() for a in (xs, ys, ws))  # frame-major order
    fi = np.repeat(frame, len(STREAK))
    ok = (xi >= 0) & (xi < px) & (yi >= 0) & (yi < px)
    pix = (yi * px + xi)[ok].astype(np.int64)
    return fi[ok].astype(np.int64), pix, w[ok].astype(np.float32)


def _texture(plan: _Plan, which: int, t: F64, rows: int, phase: float = 0.0) -> F32:
    """(n, rows, W) drifting texture `which` at frame times t (integer-pixel drift)."""
    v = plan.layers.drift_px_s[which]
    ox = np.floor(v[0] * t + phase).astype(np.int64) % TEX_PX
    oy = np.floor(v[1] * t + phase).astype(np.int64) % TEX_PX
    idx = plan.layers.tex_index[:rows][None] + (oy * 2 * TEX_PX + ox)[:, None, None]
    out: F32 = np.take(plan.layers.textures[which], idx)
    return out


def _spot_field(plan: _Plan, scene: SceneState, frames: I64, px: int) -> F32:
    """(n, H, W) hot-spot intensity: per spot, a sum of separable Gaussians in output pixels."""
    pose = plan.layers.pose
    pix = (np.arange(px) + 0.5).astype(np.float32)
    total = np.zeros((frames.size, px, px), dtype=np.float32)
    scale = float(np.sqrt(abs(np.linalg.det(pose.a)))) * pose.px_per_unit
    for spot, shape in zip(scene.hotspots, plan.spots, strict=True):
        sev = np.clip(spot.severity[frames], 0.0, 2.0)
        radius = spot.radius_px * (0.3 + 0.7 * sev)  # (n,) grows with severity
        amp = spot.peak_intensity * sev**0.8
        cx = shape.centre[0] + shape.offsets[None, :, 0] * radius[:, None]  # (n, K)
        cy = shape.centre[1] + shape.offsets[None, :, 1] * radius[:, None]
        xo, yo = pose.to_output_px(cx, cy)
        inv = (-0.5 / (shape.sigmas[None] * radius[:, None] * scale) ** 2).astype(np.float32)
        wk = (shape.weights[None] * amp[:, None]).astype(np.float32)
        gy = np.exp((pix - yo[..., None].astype(np.float32)) ** 2 * inv[..., None])  # (n, K, H)
        gx = np.exp((pix - xo[..., None].astype(np.float32)) ** 2 * inv[..., None])  # (n, K, W)
        field = np.matmul((gy * wk[..., None]).transpose(0, 2, 1), gx)  # (n, H, W)
        total += field * shape.texture
    return total


def _render_chunk(
    plan: _Plan,
    scene: SceneState,
    rng: np.random.Generator,
    sl: slice,
    out: RenderOutput,
    threshold: float,
) -> None:
    """Composite frames sl.start:sl.stop into `out` (docs/design/furnace.md 7.4), channel-first
    inside."""
    lay = plan.layers
    n, px = sl.stop - sl.start, out.frames.shape[1]
    t = scene.t[sl]
    # Background, shell, rim glow, flame and flares: one matmul over the linear layers.
    img = (plan.coef[sl] @ lay.linear).reshape(n, 3, px, px)

    # Hot-spot glow (additive), only in frames where some spot has severity > 0.
    active = np.zeros(n, dtype=bool)
    for spot in scene.hotspots:
        active |= spot.severity[sl] > 0
    hot = np.flatnonzero(active)
    peak_pix = np.zeros(hot.size, dtype=np.int64)
    peak_luma = np.zeros(hot.size, dtype=np.float32)
    if hot.size:
        field = _spot_field(plan, scene, hot + sl.start, px)  # (h, H, W)
        top = plan.glow_rgb.shape[1] - 1
        q = np.minimum(field * (top / RAMP_MAX), top).astype(np.uint16)
        sel = slice(hot[0], hot[-1] + 1) if hot[-1] - hot[0] + 1 == hot.size else hot
        img[sel] += np.take(plan.glow_rgb, q, axis=1).transpose(1, 0, 2, 3)
        out.mask[hot + sl.start] = field > threshold
        peak_pix = field.reshape(hot.size, -1).argmax(axis=1)
        peak_luma = plan.glow_luma[q.reshape(hot.size, -1)[np.arange(hot.size), peak_pix]]

    # Smoke, then feeding dust: alpha over the upper rows, drifting textures.
    rows = lay.haze_rows
    for level, profile, rgb, gain, phase in (
        (scene.smoke[sl], lay.smoke_profile, lay.smoke_rgb, SMOKE_ALPHA, 0.0),
        (scene.dust[sl], lay.dust_profile, lay.dust_rgb, DUST_ALPHA, TEX_PX / 2),
    ):
        on = np.flatnonzero(level > 0)
        if on.size == 0 or rows == 0:
            continue
        tex = _texture(plan, 2, t[on], rows, phase)  # (m, rows, W)
        alpha = np.clip(0.55 + 0.6 * tex, 0.0, 1.0) * profile
        alpha *= (gain * level[on]).astype(np.float32)[:, None, None]
        region = img[on, :, :rows]  # (m, 3, rows, W), a copy
        region += alpha[:, None] * (rgb[:, None, None] - region)
        img[on, :, :rows] = region

    # Ejecta: bright glow over the rim and saturated particle streaks.
    on = np.flatnonzero(scene.ejecta[sl] > 0)
    if on.size:
        lam = np.clip((scene.ejecta_extent[sl][on] - 0.1) / 0.4, 0.0, 1.0)
        w = (np.column_stack([1 - lam, lam]) * scene.ejecta[sl][on, None]).astype(np.float32)
        img[on] += (w @ lay.ejecta_glow).reshape(on.size, 3, px, px)
        frame, pix, bright = plan.particles
        lo, hi = np.searchsorted(frame, [sl.start, sl.stop])
        acc = np.bincount(
            (frame[lo:hi] - sl.start) * px * px + pix[lo:hi],
            weights=bright[lo:hi],
            minlength=n * px * px,
        ).astype(np.float32)
        img += acc.reshape(n, 1, px, px) * PARTICLE_RGB[:, None, None]

    # Mist veil: whitish, semi-transparent, two drifting noise layers; heavy mist is uniform.
    m = plan.mist[sl]
    opacity_at_peak = np.zeros(hot.size, dtype=np.float32)
    if m.max() > 0:
        veil = 0.7 * _texture(plan, 0, t, px) + 0.5 * _texture(plan, 1, t, px)  # (n, H, W)
        veil *= (0.7 * m * (1 - m))[:, None, None]
        veil += m[:, None, None]
        alpha = np.clip(veil, 0.0, 0.995)[:, None]  # (n, 1, H, W)
        blend = lay.mist_rgb[:, None, None] - img
        blend *= alpha
        img += blend
        opacity_at_peak = alpha.reshape(n, -1)[hot, peak_pix]
    out.visibility[hot + sl.start] = np.clip(peak_luma * (1 - opacity_at_peak), 0.0, 1.0)

    # Flicker, gain and white balance, gamma (LUT), sensor noise, uint8. The pose warp is
    # already in place: every layer above was evaluated at the warped pixel positions.
    img *= plan.exposure[sl, :, None, None]  # includes 255 ** (1 / gamma)
    np.minimum(img, plan.white_level, out=img)
    np.power(img, plan.gamma, out=img)  # now in DN, [0, 255]
    size = 3 * px * px
    draws = rng.integers(0, 2**16, (n, size + size % 2), dtype=np.uint16)[:, :size]
    img += np.take(plan.noise_dn, draws).reshape(n, 3, px, px)  # includes +0.5 for rounding
    np.clip(img, 0.0, 255.0, out=img)
    out.frames[sl] = img.transpose(0, 2, 3, 1)
