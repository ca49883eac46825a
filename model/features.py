"""Per-segment input features, computed inside the graph so ONNX takes raw windows
(docs/design/cmg.md 2).

Everything here is plain tensor arithmetic that exports at opset 17 and stays finite for
all-zero input (a power cut or a black frame).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

CURRENT_SCALE_A = 20000.0  # measurement ceiling (docs/design/furnace.md 2), maps currents to [0, 1]
MIN_BASELINE_A = 1.0  # baselines at or below this carry no setpoint information
REL_CLAMP = (-1.0, 4.0)  # (mean - baseline) / baseline is clamped to this range [ours]


def current_features(x_c: Tensor, baseline: Tensor) -> Tensor:
    """Current features f_c (docs/design/cmg.md 2): 28 per segment for S = 4.

    Layout of the last axis: 3 S raw samples (sample-major, phases A, B, C inner) / 20 000;
    per-phase mean, std (population), min, max / 20 000 (12); per-phase
    (mean - baseline) / baseline, 0 where the baseline is <= 1 A and clamped to [-1, 4] (3);
    imbalance (max - min) / mean of the three phase means, 0 where that mean is <= 1 A (1).

    Args:
        x_c: (B, T, S, 3) phase currents in A.
        baseline: (B, 3) per-phase median of the 120 s before the window, in A (columns
            beyond the third, a long baseline, are ignored here).

    Returns:
        (B, T, 3 S + 16) float32 features.
    """
    x = x_c.float()
    B, T, S, P = x.shape
    baseline = baseline[:, :3]  # a long baseline, if any, has its own features
    raw = x.reshape(B, T, S * P) / CURRENT_SCALE_A  # (B, T, 3S)
    mean = x.mean(dim=2)  # (B, T, 3)
    std = (x - mean.unsqueeze(2)).pow(2).mean(dim=2).sqrt()  # (B, T, 3), population std
    lo = x.amin(dim=2)  # (B, T, 3)
    hi = x.amax(dim=2)  # (B, T, 3)
    base = baseline.float().unsqueeze(1)  # (B, 1, 3)
    rel = (mean - base) / base.clamp(min=MIN_BASELINE_A)  # (B, T, 3)
    rel = torch.where(base > MIN_BASELINE_A, rel, torch.zeros_like(rel)).clamp(*REL_CLAMP)
    level = mean.mean(dim=-1, keepdim=True)  # (B, T, 1), mean of the phase means
    spread = mean.amax(dim=-1, keepdim=True) - mean.amin(dim=-1, keepdim=True)  # (B, T, 1)
    imbalance = spread / level.clamp(min=MIN_BASELINE_A)
    imbalance = torch.where(level > MIN_BASELINE_A, imbalance, torch.zeros_like(imbalance))
    stats = torch.cat([mean, std, lo, hi], dim=-1) / CURRENT_SCALE_A  # (B, T, 12)
    return torch.cat([raw, stats, rel, imbalance], dim=-1)  # (B, T, 3S + 16)


NEAR_ZERO = 0.1  # rich features: a sample below this share of its baseline has lost the arc
ARC_LOSS = 0.4  # rich features: a phase below this share of its baseline counts as dipping
CLIP_LEVEL_A = CURRENT_SCALE_A - 1.0  # rich features: samples at or above this are clipped


def rich_current_features(x_c: Tensor, baseline: Tensor) -> Tensor:
    """Baseline-relative statistics per segment, appended by current_feature_set "rich" [ours].

    What the hand-crafted gradient-boosting baseline shows to carry signal, per segment:
    per-phase std, min, max and mean absolute successive difference, each / baseline (12);
    per-phase share of samples near zero (< 0.1 baseline) and at the clip (6); share of
    samples with two or more phases below 0.4 baseline (1). Zero where the baseline <= 1 A.

    Args:
        x_c: (B, T, S, 3) phase currents in A.
        baseline: (B, 3) per-phase baseline in A.

    Returns:
        (B, T, 19) float32.
    """
    x = x_c.float()
    base = baseline[:, :3].float()[:, None, None, :]  # (B, 1, 1, 3)
    ok = (base > MIN_BASELINE_A).float()
    rel = x / base.clamp(min=MIN_BASELINE_A) * ok  # (B, T, S, 3)
    mean = rel.mean(dim=2, keepdim=True)
    std = (rel - mean).pow(2).mean(dim=2).sqrt()  # (B, T, 3)
    step = (rel[:, :, 1:] - rel[:, :, :-1]).abs().mean(dim=2)  # (B, T, 3)
    near_zero = ((rel < NEAR_ZERO).float() * ok).mean(dim=2)  # (B, T, 3)
    clipped = (x >= CLIP_LEVEL_A).float().mean(dim=2)  # (B, T, 3)
    dipping = ((rel < ARC_LOSS).float() * ok).sum(dim=-1)  # (B, T, S) phases dipping
    multi = (dipping >= 2.0).float().mean(dim=2, keepdim=True)  # (B, T, 1)
    parts = [std, rel.amin(dim=2), rel.amax(dim=2).clamp(max=REL_CLAMP[1]), step]
    return torch.cat([*parts, near_zero, clipped, multi], dim=-1)  # (B, T, 19)


def long_context_features(x_c: Tensor, baseline: Tensor) -> Tensor:
    """Features against a long baseline, appended by current_context "long" [ours].

    A 120-s median follows a build-up of minutes (overheating, semi-molten) and hides it; a
    median over up to 10 minutes does not. Per segment: per-phase (segment mean - long) / long
    (3) and (short baseline - long) / long (3), the drift of the recent level. Both 0 where the
    long baseline is <= 1 A, clamped to REL_CLAMP.

    Args:
        x_c: (B, T, S, 3) phase currents in A.
        baseline: (B, 6) A: the short per-phase baseline, then the long one.

    Returns:
        (B, T, 6) float32.
    """
    x = x_c.float()
    T = x.shape[1]
    short, slow = baseline[:, :3].float(), baseline[:, 3:6].float()  # (B, 3) each
    ok = (slow > MIN_BASELINE_A).float()  # (B, 3)
    denom = slow.clamp(min=MIN_BASELINE_A)
    rel = (x.mean(dim=2) - slow.unsqueeze(1)) / denom.unsqueeze(1) * ok.unsqueeze(1)  # (B, T, 3)
    drift = ((short - slow) / denom * ok).unsqueeze(1).expand(-1, T, -1)  # (B, T, 3)
    return torch.cat([rel, drift], dim=-1).clamp(*REL_CLAMP)  # (B, T, 6)


class CameraInput(NamedTuple):
    """The camera input of docs/design/cmg.md 2 as two 3-channel halves, plus the raw pixels.

    All three are channels-first views of channels-last buffers (no layout copies).
    """

    standard: Tensor  # (B, T, 3, H, W) frame_t / 255, standardised per channel
    diff: Tensor  # (B, T, 3, H, W) (frame_t - frame_{t-1}) / 255, zero for t = 0
    pixels: Tensor  # (B, T, 3, H, W) frame_t as float in [0, 255]
    extra: Tensor | None = None  # (B, T, E, H, W) physics channels (camera_channels) [ours]


FRAME_STD_FLOOR = 0.02  # camera_norm "frame": floor of a frame's channel std ([0, 1] scale)


def camera_inputs(
    x_v: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    norm: str = "global",
    diff_to: str = "previous",
    channels: str = "rgb",
) -> CameraInput:
    """Camera input halves (docs/design/cmg.md 2), computed without interleaving the six channels.

    The temporal residual is taken on the [0, 1] frames, not the standardised ones.

    Args:
        x_v: (B, T, H, W, 3) uint8 frames (the last frame of each segment).
        mean: (3,) per-channel mean of training frames on the [0, 1] scale.
        std: (3,) per-channel standard deviation, same scale.
        norm: "global" standardises with mean/std (docs/design/cmg.md 2); "frame" [ours] with each
            frame's own per-channel mean and std (floored), which removes exposure gain.
        diff_to: "previous": frame_t - frame_{t-1} (docs/design/cmg.md 2); "first" [ours]: frame_t
        minus
            the window's first frame, a trailing reference that accumulates slow change.
        channels: "rgb" (docs/design/cmg.md 2); "physics" [ours] adds `physics_channels` as `extra`.

    Returns:
        CameraInput(standard, diff, pixels, extra), each (B, T, 3, H, W) float32; extra is
        None for "rgb", else (B, T, PHYSICS_CHANNELS, H, W).
    """
    B, T, H, W, C = x_v.shape
    pixels = x_v.float().reshape(B, T, H, W * C)  # (B, T, H, W*3)
    if norm == "frame":
        unit = pixels.reshape(B, T, H * W, C) * (1.0 / 255.0)  # (B, T, H*W, 3)
        f_mean = unit.mean(dim=2, keepdim=True)  # (B, T, 1, 3)
        f_std = (unit - f_mean).pow(2).mean(dim=2, keepdim=True).sqrt()
        standard = ((unit - f_mean) / f_std.clamp(min=FRAME_STD_FLOOR)).reshape(B, T, H, W * C)
    else:
        # A (W*3,) row broadcasts far faster than a (3,) one: standard = pixels * a + b
        scale = (1.0 / (255.0 * std)).repeat(W)  # (W*3,)
        shift = (-mean / std).repeat(W)  # (W*3,)
        standard = torch.addcmul(shift, pixels, scale)
    ref = pixels[:, :1] if diff_to == "first" else pixels[:, :-1]
    step = (pixels[:, 1:] - ref) * (1.0 / 255.0)  # (B, T-1, H, W*3)
    diff = torch.cat([torch.zeros_like(pixels[:, :1]), step], dim=1)  # (B, T, H, W*3)

    def _channels_first(x: Tensor) -> Tensor:
        return x.reshape(B, T, H, W, C).permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)

    pixels_cf = _channels_first(pixels)
    extra = physics_channels(pixels_cf) if channels == "physics" else None
    return CameraInput(_channels_first(standard), _channels_first(diff), pixels_cf, extra)


PHYSICS_CHANNELS = 2  # camera_channels "physics": redness, local contrast
LOCAL_CELL_PX = 4  # local contrast: brightness minus the mean of the 3 x 3 cells of this side
REDNESS_GAIN = 4.0  # fixed gains bring both physics channels to roughly unit spread
CONTRAST_GAIN = 8.0


def _box_blur3(x: Tensor) -> Tensor:
    """Mean over the 3 x 3 neighbourhood of each position, inside the map only (separable).

    Args:
        x: (N, 1, h, w).

    Returns:
        (N, 1, h, w); exact box mean over the part of the box inside the map.
    """
    x = F.avg_pool2d(x, (1, 3), stride=1, padding=(0, 1), count_include_pad=False)
    return F.avg_pool2d(x, (3, 1), stride=1, padding=(1, 0), count_include_pad=False)


def physics_channels(pixels: Tensor) -> Tensor:
    """Physics-informed camera channels [ours]: what makes a local incandescent spot stand out.

    Redness (R - B) / 255 separates orange-hot metal from the whitish mist veil and the grey
    shell, whatever the exposure; local contrast (brightness / 255 minus the mean brightness
    of the surrounding 3 x 3 cells of LOCAL_CELL_PX px, i.e. a 12 px box at 64 px, computed
    at cell resolution for CPU speed) isolates a local bright blob from global brightness,
    flicker and exposure gain. Both are scaled by fixed gains; all-zero frames give zeros.

    Args:
        pixels: (B, T, 3, H, W) frames as floats in [0, 255]; H, W multiples of LOCAL_CELL_PX.

    Returns:
        (B, T, 2, H, W) float32: REDNESS_GAIN * redness, CONTRAST_GAIN * local contrast.
    """
    B, T, C, H, W = pixels.shape
    k = LOCAL_CELL_PX
    h, w = H // k, W // k
    unit = pixels * (1.0 / 255.0)
    redness = unit[:, :, 0] - unit[:, :, 2]  # (B, T, H, W)
    bright = (unit[:, :, 0] + unit[:, :, 1] + unit[:, :, 2]) * (1.0 / 3.0)  # (B, T, H, W)
    cells = F.avg_pool2d(bright.reshape(B * T, 1, H, W), kernel_size=k)  # (B*T, 1, h, w)
    around = _box_blur3(cells).reshape(B * T, h, 1, w, 1)
    local = (bright.reshape(B * T, h, k, w, k) - around).reshape(B, T, H, W)
    return torch.stack([REDNESS_GAIN * redness, CONTRAST_GAIN * local], dim=2)


HOTNESS_CHANNELS = 3  # code_target "hotness": local glow, redness, saturation
SATURATION_FLOOR = 200.0  # code_target "hotness": min(R, G, B) above this counts as saturated
HOTNESS_GAINS = (50.0, 10.0, 20.0)  # bring each hotness channel to roughly unit spread


def hotness_target(pixels: Tensor, px: int, physics: Tensor | None = None) -> Tensor:
    """Low-resolution "hotness" map that code_target "hotness" reconstructs from codes [ours].

    Channels, each area-averaged to px x px and multiplied by HOTNESS_GAINS: positive local
    contrast (brightness above its surroundings, / 255), positive redness (R - B) / 255, and
    saturation relu(min(R, G, B) - SATURATION_FLOOR) / (255 - SATURATION_FLOOR). A hot spot
    raises the first two locally, ejecta the first and third; mist and exposure move them
    little.

    Args:
        pixels: (B, T, 3, H, W) frames as floats in [0, 255]; H = W, a multiple of px.
        px: target side.
        physics: `physics_channels(pixels)` (B, T, 2, H, W) if already computed.

    Returns:
        (B*T, 3, px, px) float32, zeros for all-zero frames.
    """
    B, T, C, H, W = pixels.shape
    phys = physics_channels(pixels) if physics is None else physics  # (B, T, 2, H, W)
    glow = F.relu(phys[:, :, 1]) * (HOTNESS_GAINS[0] / CONTRAST_GAIN)
    red = F.relu(phys[:, :, 0]) * (HOTNESS_GAINS[1] / REDNESS_GAIN)
    sat = F.relu(pixels.amin(dim=2) - SATURATION_FLOOR)
    sat = sat * (HOTNESS_GAINS[2] / (255.0 - SATURATION_FLOOR))
    maps = torch.stack([glow, red, sat], dim=2).reshape(B * T, HOTNESS_CHANNELS, H, W)
    return F.avg_pool2d(maps, kernel_size=H // px)


HOTSPOT_CHANNELS = 2  # code_target "hotspot": hot blob, saturation
SHELL_FROM = 0.25  # code_target "hotspot": the blob channel ignores the top quarter (rim, flame)


def hotspot_target(pixels: Tensor, px: int, physics: Tensor | None = None) -> Tensor:
    """Sparse hot-spot map that code_target "hotspot" reconstructs from codes [ours].

    The "hotness" map spends its energy on what every frame has (the rim glow, the shell's
    general tint), so a small blob barely moves its reconstruction error. This target keeps
    only what a local incandescent spot or ejecta add: channel 0 is the geometric mean
    sqrt(glow * redness) of the two "hotness" channels (bright above the surroundings AND
    red-hot), zero in the top SHELL_FROM of the view where the rim glow and flame always
    are (docs/design/furnace.md 3: the camera looks at the shell, rim at the top); channel 1 the
    saturation channel over the whole view; both at px x px, HOTNESS_GAINS scale.

    Args:
        pixels: (B, T, 3, H, W) frames as floats in [0, 255]; H = W, a multiple of px.
        px: target side.
        physics: `physics_channels(pixels)` (B, T, 2, H, W) if already computed.

    Returns:
        (B*T, 2, px, px) float32, zeros for all-zero frames (sqrt is taken of values >= 0
        and has no gradient path: the target is a constant).
    """
    hot = hotness_target(pixels, px, physics)  # (B*T, 3, px, px)
    blob = (hot[:, 0] * hot[:, 1]).clamp(min=0.0).sqrt()  # (B*T, px, px)
    rows = torch.arange(px, device=pixels.device) >= int(SHELL_FROM * px)  # (px,)
    blob = blob * rows.to(blob.dtype)[:, None]
    return torch.stack([blob, hot[:, 2]], dim=1)


HOTSPOT_STATS = 10  # camera_summary "hotspot": statistics per segment
RELATIVE_STATS = 8  # camera_summary "hotspot_relative": statistics per segment
STATS_PX = 16  # their map resolution (the hot-spot target's)
STATS_GAIN = 10.0  # brings the statistics to roughly unit spread


def summary_width(summary: str) -> int:
    """Statistics per segment that `camera_summary` adds to the pooled camera map."""
    return {"none": 0, "hotspot": HOTSPOT_STATS, "hotspot_relative": RELATIVE_STATS}[summary]


def hotspot_stats(pixels: Tensor, *, relative: bool = False) -> Tensor:
    """Per-segment summary of what makes a hot spot [ours], read by camera_summary "hotspot".

    A gradient-boosting model on these few numbers of the window's last frame names
    semi-molten with AUROC 0.95 on the test furnaces, where the camera codes reach 0.61
    (docs/experiments.md): the information is easy to compute and easy to lose. Of the
    `hotspot_target` maps (hot blob, saturation): mean, max and the share of cells above
    mean + 2 std (6); of the frame: mean and max of redness (R - B) / 255 and of brightness (4).
    All scaled by STATS_GAIN; zeros for all-zero frames.

    `relative` (camera_summary "hotspot_relative") keeps only what stands out within the
    frame, so a furnace's camera appearance (exposure, tint, mist level) moves it less: of
    each map the max above its mean, the std and the share above mean + 2 std (6); of the
    frame the max above the mean of redness and of brightness (2). Adding a constant to every
    pixel leaves the frame part unchanged.

    Args:
        pixels: (B, T, 3, H, W) frames as floats in [0, 255]; H = W, a multiple of STATS_PX.
        relative: the appearance-free variant.

    Returns:
        (B, T, HOTSPOT_STATS) float32, (B, T, RELATIVE_STATS) when `relative`.
    """
    B, T = pixels.shape[:2]
    maps = hotspot_target(pixels, STATS_PX).reshape(B, T, HOTSPOT_CHANNELS, -1)  # (B, T, 2, P)
    mean = maps.mean(dim=-1)
    std = (maps - mean.unsqueeze(-1)).pow(2).mean(dim=-1).sqrt()
    above = (maps > (mean + 2.0 * std).unsqueeze(-1)).float().mean(dim=-1)
    unit = pixels * (1.0 / 255.0)
    red = (unit[:, :, 0] - unit[:, :, 2]).flatten(2)  # (B, T, H*W)
    bright = unit.mean(dim=2).flatten(2)
    if relative:
        parts = [maps.amax(dim=-1) - mean, std, above]  # (B, T, 2) each
        frame = [red.amax(-1) - red.mean(-1), bright.amax(-1) - bright.mean(-1)]
    else:
        parts = [mean, maps.amax(dim=-1), above]  # (B, T, 2) each
        frame = [red.mean(-1), red.amax(-1), bright.mean(-1), bright.amax(-1)]  # (B, T) each
    return torch.cat([*parts, torch.stack(frame, dim=-1)], dim=-1) * STATS_GAIN


def camera_features(x_v: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Camera features (docs/design/cmg.md 2): standardised frame_t || frame_t - frame_{t-1}.

    The encoders consume `camera_inputs` directly, which is the same tensor split in two
    halves (the stems apply the two halves of their first conv separately).

    Args:
        x_v: (B, T, H, W, 3) uint8 frames.
        mean: (3,) per-channel mean on the [0, 1] scale.
        std: (3,) per-channel standard deviation, same scale.

    Returns:
        (B, T, 6, H, W) float32.
    """
    cam = camera_inputs(x_v, mean, std)
    return torch.cat([cam.standard, cam.diff], dim=2)


def frame_target(pixels: Tensor, px: int) -> Tensor:
    """Camera reconstruction target: the current frame, area-downsampled (docs/design/cmg.md 4.8).

    Args:
        pixels: (B, T, 3, H, W) frames as floats in [0, 255] (`CameraInput.pixels`);
            H and W are multiples of px.
        px: target side (recon_px).

    Returns:
        (B*T, 3, px, px) float32 on the [0, 1] scale.
    """
    B, T, C, H, W = pixels.shape
    x = pixels.reshape(B * T, C, H, W)  # (B*T, 3, H, W)
    k = H // px
    # area average as k*k strided slices: on channels-last input this beats avg_pool2d
    total = sum(x[:, :, i::k, j::k] for i in range(k) for j in range(k))
    return total * (1.0 / (255.0 * k * k))  # type: ignore[return-value]
