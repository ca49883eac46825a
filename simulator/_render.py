"""Static layers of the shell-camera renderer, built once per furnace (docs/design/furnace.md 3 and
7.4).

`simulator.camera` combines them per frame. Scene coordinates are 64-px frame pixels (x right,
y down); every layer is evaluated at the pose-warped position of each output pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from simulator.config import FRAME_PX, CameraParams
from simulator.scene import HotSpot

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

TEX_PX = 128  # period of the drifting noise textures, in scene pixels
SUPERSAMPLE = 2  # static layers are rendered at 2x2 samples per output pixel
N_FLARES = 4
RUST_RGB = np.array([0.30, 0.14, 0.07])
CRUST_RGB = np.array([0.07, 0.05, 0.04])
BACKGROUND_RGB = np.array([0.045, 0.045, 0.05])
MOUTH_RGB = np.array([1.0, 0.45, 0.10])  # glowing charge surface at rim_glow = 1
SPILL_RGB = np.array([0.42, 0.14, 0.035])  # rim light reflected by the upper shell
FLAME_RGB = np.array([1.0, 0.62, 0.18])
FLARE_RGB = np.array([1.35, 1.0, 0.55])
EJECTA_GLOW_RGB = np.array([1.5, 1.25, 0.85])
# Incandescence ramp of the hot spot, black -> dark red -> orange -> yellow-white [guess].
RAMP_I = (0.0, 0.15, 0.3, 0.5, 0.7, 0.9, 1.1, 1.4, 2.0)
RAMP_RGB = (
    (0.0, 0.0, 0.0),
    (0.16, 0.01, 0.0),
    (0.42, 0.04, 0.0),
    (0.75, 0.16, 0.02),
    (0.98, 0.38, 0.05),
    (1.05, 0.65, 0.18),
    (1.1, 0.9, 0.5),
    (1.2, 1.1, 0.85),
    (1.3, 1.3, 1.2),
)
RAMP_MAX = RAMP_I[-1]
LUMA = np.array([0.299, 0.587, 0.114])


def periodic_noise(
    rng: np.random.Generator, *, blur_px: float, stretch_y: float = 1.0, size: int = TEX_PX
) -> F64:
    """Smooth periodic noise: white noise low-passed by a Gaussian in the frequency domain.

    Args:
        rng: source of the white noise.
        blur_px: Gaussian blur sigma in texture pixels (feature size).
        stretch_y: vertical blur factor (> 1 gives vertical streaks, e.g. flame tongues).
        size: period P in pixels.

    Returns:
        (P, P) zero-mean, unit-std field that wraps around at both edges.
    """
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    sx, sy = blur_px, blur_px * stretch_y
    gain = np.exp(-2.0 * np.pi**2 * ((fx * sx) ** 2 + (fy * sy) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    field -= field.mean()
    out: F64 = field / max(float(field.std()), 1e-12)
    return out


def sample_periodic(tex: F64, x: F64, y: F64) -> F64:
    """Bilinear lookup in a periodic texture at scene coordinates. x, y: any equal shapes."""
    p = tex.shape[0]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    xi, yi = x0.astype(np.int64) % p, y0.astype(np.int64) % p
    xj, yj = (xi + 1) % p, (yi + 1) % p
    top = tex[yi, xi] * (1 - fx) + tex[yi, xj] * fx
    bottom = tex[yj, xi] * (1 - fx) + tex[yj, xj] * fx
    out: F64 = top * (1 - fy) + bottom * fy
    return out


@dataclass(frozen=True)
class Pose:
    """Camera pose: output = A @ scene + b in 64-px units, then `px_per_unit` output pixels."""

    a: F64  # (2, 2) scale * rotation(roll)
    b: F64  # (2,) offset
    px_per_unit: float  # frame_px / 64

    @classmethod
    def from_camera(cls, cam: CameraParams, frame_px: int) -> Pose:
        th = np.deg2rad(cam.roll_deg)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        a = cam.scale * rot
        c = np.array([FRAME_PX / 2, FRAME_PX / 2])
        b = c + np.asarray(cam.shift_px, dtype=np.float64) - a @ c
        return cls(a=a, b=b, px_per_unit=frame_px / FRAME_PX)

    def to_output_px(self, x: F64, y: F64) -> tuple[F64, F64]:
        """Scene coordinates -> continuous output pixel coordinates (pixel i spans [i, i+1))."""
        k = self.px_per_unit
        xo = (self.a[0, 0] * x + self.a[0, 1] * y + self.b[0]) * k
        yo = (self.a[1, 0] * x + self.a[1, 1] * y + self.b[1]) * k
        return xo, yo

    def scene_grid(self, frame_px: int, samples: int = 1) -> tuple[F64, F64]:
        """Scene coordinates of the (frame_px * samples)^2 sample points, (N, N) each."""
        n = frame_px * samples
        centres = (np.arange(n) + 0.5) / (samples * self.px_per_unit)  # output, 64-px units
        xo, yo = np.meshgrid(centres - self.b[0], centres - self.b[1])
        inv = np.linalg.inv(self.a)
        return inv[0, 0] * xo + inv[0, 1] * yo, inv[1, 0] * xo + inv[1, 1] * yo


class StaticLayers(NamedTuple):
    """Per-furnace layers in output pixels (H = W = frame_px).

    Colour layers are channel-first, (3, H, W) per layer, so per-pixel alphas broadcast over
    contiguous rows; frames are transposed to (H, W, 3) only when quantised.
    """

    pose: Pose
    linear: F32  # (L, 3*H*W) channel-first: base, rim glow, flame A/B, N_FLARES flares
    ejecta_glow: F32  # (2, 3*H*W) channel-first: glow of a small (10 %) and a large (50 %) spray
    haze_rows: int  # rows reached by smoke and dust (the rest is never touched)
    smoke_profile: F32  # (haze_rows, W) smoke opacity at density 1
    dust_profile: F32  # (haze_rows, W) dust opacity at level 1
    smoke_rgb: F32  # (3,)
    dust_rgb: F32  # (3,)
    mist_rgb: F32  # (3,)
    tex_index: I64  # (H, W) flat index of each pixel into a (2P, 2P) tiled texture
    textures: F32  # (3, 4 P^2) tiled drifting textures: mist coarse, mist fine, smoke
    drift_px_s: F64  # (3, 2) drift velocity of each texture, scene px / s
    rim_y: float  # scene row of the rim line
    shell_half_width: float


def _geometry(cam: CameraParams, x: F64, y: F64) -> tuple[F64, F64, F64]:
    """Shell coordinate u in [-1, 1], cosine of the surface normal, and the row below the rim."""
    half = cam.shell_width * FRAME_PX / 2
    u = (x - FRAME_PX / 2) / half
    cosu = np.sqrt(np.clip(1.0 - u**2, 0.0, 1.0))
    return u, cosu, y - cam.rim_rows * FRAME_PX


def _soft(d: F64, width: float = 0.5) -> F64:
    """Smooth step from 1 (d < 0) to 0 (d > 0) over `width` pixels: an anti-aliased edge."""
    out: F64 = np.clip(0.5 - d / width, 0.0, 1.0)
    return out


def _static_rgb(cam: CameraParams, tex: dict[str, F64], x: F64, y: F64) -> F64:
    """(L, N, N, 3) linear layers at scene points x, y: base, rim glow, flames, flares."""
    u, cosu, below = _geometry(cam, x, y)
    half = cam.shell_width * FRAME_PX / 2
    shell = _soft(np.abs(u) - 1.0, 1.0 / half) * _soft(-below)
    lip = _soft(np.abs(u) - 1.04, 1.0 / half) * _soft(-below - 2.0) * (1 - shell)
    mouth = _soft(np.abs(u) - 0.97, 1.0 / half) * (1 - shell - lip)
    bg = 1.0 - shell - lip - mouth
    shade = 0.3 + 0.7 * cosu**0.8  # cosine shading of the cylinder, light from the front
    rust = np.clip(0.45 + 0.3 * sample_periodic(tex["rust"], x, y), 0.0, 1.0)[..., None]
    steel = np.asarray(cam.shell_rgb) * (1 - 0.6 * rust) + RUST_RGB * 0.6 * rust
    steel = steel * (1 + 0.12 * sample_periodic(tex["grain"], x, y))[..., None]
    # Horizontal seams, bent into arcs by the cylinder; a weld bead catches light below each.
    m = np.mod(below - 1.5 * cosu, cam.seam_spacing_px)
    d = np.minimum(m, cam.seam_spacing_px - m)
    seam = 1 - 0.5 * np.exp(-((d / 0.7) ** 2)) + 0.3 * np.exp(-(((m - 1.3) / 0.6) ** 2))
    steel = steel * (seam * shade)[..., None]
    lip_rgb = np.asarray(cam.shell_rgb) * 1.15 * shade[..., None]
    lit = (1 + 0.35 * sample_periodic(tex["bg"], x, y)) * (1.2 - 0.5 * y / FRAME_PX)
    back = BACKGROUND_RGB * lit[..., None]
    base = shell[..., None] * steel + lip[..., None] * lip_rgb + mouth[..., None] * CRUST_RGB
    base += bg[..., None] * np.clip(back, 0.0, None)

    crack = sample_periodic(tex["crack"], x, y)
    hot = mouth * np.clip(0.55 + 0.25 * crack, 0.1, 0.9) * (0.7 + 0.3 * cosu)
    spill = shell * np.exp(-np.clip(below, 0, None) / 5.0) * (0.3 + 0.7 * cosu)
    halo = bg * 0.12 * np.exp(-np.clip(np.abs(u) - 1.0, 0, None) * half / 4.0) * _soft(below - 3)
    rim = (
        hot[..., None] * MOUTH_RGB
        + spill[..., None] * SPILL_RGB
        + (lip * 0.5 * shade + halo)[..., None] * np.array([1.0, 0.38, 0.1])
    )
    layers = [base, rim]
    height = np.clip(-below, 0.0, None)  # rows above the rim line
    inside = _soft(np.abs(u) - 0.95, 2.0 / half) * _soft(below - 1.0, 2.0)
    for name in ("flame_a", "flame_b"):
        n = sample_periodic(tex[name], x, y)
        tongue = np.clip(0.45 + 0.5 * n - height / 12.0, 0.0, 1.0) ** 1.5 * inside
        layers.append(0.75 * tongue[..., None] * FLAME_RGB)
    for xf in tex["flare_x"]:
        blob = np.exp(-0.5 * (((x - xf) / 3.0) ** 2 + ((below + 3.0) / 5.0) ** 2))
        layers.append(blob[..., None] * FLARE_RGB)
    return np.stack(layers)


def _downsample(a: F64, s: int) -> F64:
    """Average s x s pixel blocks: (..., N*s, N*s, C) -> (..., N, N, C)."""
    *lead, n, _, c = a.shape
    out: F64 = a.reshape(*lead, n // s, s, n // s, s, c).mean(axis=(-4, -2))
    return out


def build_layers(cam: CameraParams, frame_px: int) -> StaticLayers:
    """All per-furnace layers, seeded from `cam.texture_seed` only.

    Args:
        cam: pose, exposure and look of this furnace's camera.
        frame_px: output frame size H = W.

    Returns:
        StaticLayers with (L, H*W*3) linear layers, haze profiles and drifting textures.
    """
    trng = np.random.default_rng(cam.texture_seed)
    tex = {
        "rust": periodic_noise(trng, blur_px=6.0),
        "grain": periodic_noise(trng, blur_px=1.2),
        "bg": periodic_noise(trng, blur_px=5.0),
        "crack": periodic_noise(trng, blur_px=1.5),
        "flame_a": periodic_noise(trng, blur_px=1.6, stretch_y=3.0),
        "flame_b": periodic_noise(trng, blur_px=1.6, stretch_y=3.0),
    }
    half = cam.shell_width * FRAME_PX / 2
    flare_u = np.linspace(-0.6, 0.6, N_FLARES) + trng.uniform(-0.1, 0.1, N_FLARES)
    tex["flare_x"] = FRAME_PX / 2 + half * flare_u
    drifting = [
        periodic_noise(trng, blur_px=7.0),  # mist, coarse
        periodic_noise(trng, blur_px=3.5),  # mist, fine
        periodic_noise(trng, blur_px=3.0, stretch_y=1.5),  # smoke and dust
    ]
    angle = trng.uniform(0, 2 * np.pi, 2)
    speed = trng.uniform(2.0, 6.0, 2)
    drift = np.array(
        [
            [speed[0] * np.cos(angle[0]), speed[0] * np.sin(angle[0])],
            [speed[1] * np.cos(angle[1]), speed[1] * np.sin(angle[1])],
            [trng.uniform(-2.0, 2.0), trng.uniform(5.0, 9.0)],  # smoke rises
        ]
    )
    mist_grey = trng.uniform(0.79, 0.88)
    mist_rgb = np.array([mist_grey, mist_grey + 0.01, mist_grey + 0.03])
    smoke_rgb = np.array([0.50, 0.46, 0.42]) * trng.uniform(0.8, 1.15, 3) ** 0.3

    pose = Pose.from_camera(cam, frame_px)
    xs, ys = pose.scene_grid(frame_px, SUPERSAMPLE)
    linear = _downsample(_static_rgb(cam, tex, xs, ys), SUPERSAMPLE)  # (L, H, W, 3)
    u, _, below = _geometry(cam, xs, ys)
    side = np.exp(-np.clip(np.abs(u) - 1.0, 0.0, None) * 3.0)
    smoke = np.where(below < 0, 1.0, np.exp(-np.clip(below, 0, None) / 14.0)) * side
    dust = np.exp(-((below / 7.0) ** 2)) * np.exp(-np.clip(np.abs(u) - 1.1, 0.0, None) * 6.0)
    profiles = _downsample(np.stack([smoke, dust], axis=-1), SUPERSAMPLE)  # (H, W, 2)
    reach = np.flatnonzero(profiles.max(axis=(1, 2)) > 2e-3)
    rows = int(reach[-1]) + 1 if reach.size else 0
    glows = []
    rim_y = cam.rim_rows * FRAME_PX
    for extent in (0.1, 0.5):
        r = extent * FRAME_PX * 0.55
        g = np.exp(-0.5 * ((xs - FRAME_PX / 2) ** 2 + (ys - rim_y) ** 2) / r**2)
        glows.append(g[..., None] * EJECTA_GLOW_RGB)
    glow = _downsample(np.stack(glows), SUPERSAMPLE)

    xc, yc = pose.scene_grid(frame_px)
    xi = np.floor(xc).astype(np.int64) % TEX_PX
    yi = np.floor(yc).astype(np.int64) % TEX_PX
    tiled = np.stack([np.tile(t, (2, 2)).ravel() for t in drifting])
    return StaticLayers(
        pose=pose,
        linear=linear.transpose(0, 3, 1, 2).reshape(linear.shape[0], -1).astype(np.float32),
        ejecta_glow=glow.transpose(0, 3, 1, 2).reshape(2, -1).astype(np.float32),
        haze_rows=rows,
        smoke_profile=profiles[:rows, :, 0].astype(np.float32),
        dust_profile=profiles[:rows, :, 1].astype(np.float32),
        smoke_rgb=smoke_rgb.astype(np.float32),
        dust_rgb=np.array([0.36, 0.34, 0.31], dtype=np.float32),
        mist_rgb=mist_rgb.astype(np.float32),
        tex_index=yi * (2 * TEX_PX) + xi,
        textures=tiled.astype(np.float32),
        drift_px_s=drift,
        rim_y=rim_y,
        shell_half_width=half,
    )


class SpotShape(NamedTuple):
    """One hot spot's irregular shape: K Gaussians around its centre (scene units)."""

    centre: F64  # (2,) scene x, y
    offsets: F64  # (K, 2) centre offsets in units of the final radius
    sigmas: F64  # (K,) Gaussian sigmas in units of the final radius
    weights: F64  # (K,) normalised so the field peaks at 1 at severity 1
    texture: F32  # (H, W) static mottling of the glowing steel, multiplies the field


def spot_shape(spot: HotSpot, cam: CameraParams, pose: Pose, frame_px: int) -> SpotShape:
    """Draw the 3-6 jittered Gaussians of one hot spot from its `shape_seed`."""
    srng = np.random.default_rng(spot.shape_seed)
    k = int(srng.integers(3, 7))
    offsets = srng.normal(0.0, 0.45, (k, 2))
    offsets[0] = 0.0  # one Gaussian stays on the centre
    sigmas = srng.uniform(0.35, 0.65, k)
    weights = srng.uniform(0.5, 1.0, k)
    g = np.linspace(-2.0, 2.0, 81)
    gx, gy = np.meshgrid(g, g)
    d2 = (gx[..., None] - offsets[:, 0]) ** 2 + (gy[..., None] - offsets[:, 1]) ** 2
    peak = float((weights * np.exp(-0.5 * d2 / sigmas**2)).sum(-1).max())
    mottle = periodic_noise(srng, blur_px=1.8, size=64)
    xs, ys = pose.scene_grid(frame_px)
    texture = np.clip(1.0 + 0.3 * sample_periodic(mottle, xs, ys), 0.4, 1.6)
    half = cam.shell_width * FRAME_PX / 2
    rim_y = cam.rim_rows * FRAME_PX
    centre = np.array([FRAME_PX / 2 + (2 * spot.u - 1) * half, rim_y + spot.v * (FRAME_PX - rim_y)])
    return SpotShape(centre, offsets, sigmas, weights / peak, texture.astype(np.float32))


def incandescence_lut(n: int = 256) -> tuple[F32, F32]:
    """Hot-spot colour and luminance tables over intensity [0, RAMP_MAX].

    Returns:
        ((n, 3) additive RGB, (n,) luminance clipped to [0, 1]).
    """
    i = np.linspace(0.0, RAMP_MAX, n)
    rgb = np.stack([np.interp(i, RAMP_I, [c[j] for c in RAMP_RGB]) for j in range(3)], axis=-1)
    return rgb.astype(np.float32), np.clip(rgb @ LUMA, 0.0, 1.0).astype(np.float32)
