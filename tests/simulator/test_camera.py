"""Invariants of the shell-camera renderer (docs/design/furnace.md 7.4, 7.6, 7.7)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from simulator.camera import random_camera_params, render_frames
from simulator.config import CameraParams
from simulator.scene import HotSpot, SceneState

CAM = CameraParams(rim_rows=0.12, noise_dn=2.0, mist_base=0.1, flicker_amp=0.06)


def make_scene(n: int, *, severity: Any = None, **levels: Any) -> SceneState:
    """A normal scene of n frames at 2 fps; keyword levels override the defaults."""
    arrays: dict[str, Any] = {
        "rim_glow": 1.0,
        "flame": 1.0,
        "smoke": 0.0,
        "flare": 0.0,
        "dust": 0.0,
        "ejecta": 0.0,
        "ejecta_extent": 0.3,
        "ejecta_dir": 0.0,
        "mist": 0.0,
    }
    arrays.update(levels)
    full = {
        k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy() for k, v in arrays.items()
    }
    spots: tuple[HotSpot, ...] = ()
    if severity is not None:
        sev = np.broadcast_to(np.asarray(severity, dtype=np.float64), (n,)).copy()
        spots = (
            HotSpot(u=0.5, v=0.5, shape_seed=7, radius_px=12.0, peak_intensity=1.0, severity=sev),
        )
    return SceneState(t=np.arange(n) / 2.0, hotspots=spots, **full)


def luminance(frames: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) float luminance in DN."""
    out: np.ndarray = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return out


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def saturated_fraction(frames: np.ndarray) -> float:
    """Share of pixels with some channel at 250 DN or more."""
    return float((frames.max(axis=-1) >= 250).mean())


def test_shapes_and_dtypes() -> None:
    out = render_frames(make_scene(5, severity=0.5), CAM, np.random.default_rng(0))
    assert out.frames.shape == (5, 64, 64, 3) and out.frames.dtype == np.uint8
    assert out.mask.shape == (5, 64, 64) and out.mask.dtype == np.uint8
    assert out.visibility.shape == (5,) and out.visibility.dtype == np.float32
    assert set(np.unique(out.mask)) <= {0, 1}
    small = render_frames(make_scene(2), CAM, np.random.default_rng(0), frame_px=32)
    assert small.frames.shape == (2, 32, 32, 3)
    empty = render_frames(make_scene(0), CAM, np.random.default_rng(0))
    assert empty.frames.shape == (0, 64, 64, 3)


def test_deterministic_and_chunk_invariant() -> None:
    scene = make_scene(9, severity=np.linspace(0, 1, 9), mist=0.4, ejecta=[0] * 6 + [1] * 3)
    global_state = np.random.get_state()[1].copy()  # type: ignore[index]
    a = render_frames(scene, CAM, np.random.default_rng(3))
    assert np.array_equal(np.random.get_state()[1], global_state)  # type: ignore[index]
    b = render_frames(scene, CAM, np.random.default_rng(3), chunk=4)
    assert digest(a.frames) == digest(b.frames)
    assert digest(a.mask) == digest(b.mask)
    assert np.array_equal(a.visibility, b.visibility)
    other = render_frames(scene, replace(CAM, texture_seed=1), np.random.default_rng(3))
    assert digest(other.frames) != digest(a.frames)


def test_normal_shell_is_dark_and_hot_spot_glows() -> None:
    normal = render_frames(make_scene(4), CAM, np.random.default_rng(0))
    hot = render_frames(make_scene(4, severity=1.0), CAM, np.random.default_rng(0))
    region = hot.mask.astype(bool)
    assert region.sum() > 50
    assert luminance(normal.frames)[:, 24:, 16:48].mean() < 80  # dark steel below the rim
    assert luminance(hot.frames)[region].max() > luminance(normal.frames)[region].max() + 100
    assert normal.mask.sum() == 0 and np.all(normal.visibility == 0)
    assert np.all(hot.visibility > 0.5)


def test_mask_grows_with_severity() -> None:
    sev = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    out = render_frames(make_scene(5, severity=sev), CAM, np.random.default_rng(0))
    area = out.mask.reshape(5, -1).sum(axis=1)
    assert area[0] == 0
    assert np.all(np.diff(area) > 0)
    assert np.all(np.diff(out.visibility) > 0)


def test_mask_follows_the_pose() -> None:
    scene = make_scene(1, severity=1.0)
    centred = render_frames(scene, CAM, np.random.default_rng(0)).mask[0]
    shifted = render_frames(scene, replace(CAM, shift_px=(6.0, 0.0)), np.random.default_rng(0))
    cols = np.arange(64)
    dx = (shifted.mask[0].sum(0) @ cols) / shifted.mask[0].sum() - (
        centred.sum(0) @ cols
    ) / centred.sum()
    assert dx == pytest.approx(6.0, abs=0.5)


def test_heavy_mist_hides_the_hot_spot() -> None:
    clear = render_frames(make_scene(3, severity=1.0), CAM, np.random.default_rng(0))
    misty = render_frames(make_scene(3, severity=1.0, mist=0.95), CAM, np.random.default_rng(0))
    assert misty.visibility.max() < 0.25 * clear.visibility.min()
    assert np.array_equal(misty.mask, clear.mask)  # the mask is the physical region


def test_ejecta_saturate_pixels() -> None:
    calm = render_frames(make_scene(4), CAM, np.random.default_rng(0))
    burst = render_frames(
        make_scene(4, ejecta=1.0, ejecta_extent=0.4), CAM, np.random.default_rng(0)
    )
    assert saturated_fraction(burst.frames) > saturated_fraction(calm.frames) + 0.05


def test_flicker_varies_frame_mean() -> None:
    scene = make_scene(40)
    means = {}
    for amp in (0.0, 0.15):
        cam = replace(CAM, flicker_amp=amp)
        means[amp] = render_frames(scene, cam, np.random.default_rng(0)).frames.mean(axis=(1, 2, 3))
    jitter = {amp: np.diff(m).std() for amp, m in means.items()}  # frame to frame
    assert jitter[0.15] > 2.0
    assert jitter[0.15] > 4 * jitter[0.0]


def test_random_camera_params_ranges() -> None:
    rng = np.random.default_rng(0)
    cams = [random_camera_params(rng) for _ in range(200)]
    assert all(abs(c.roll_deg) <= 8 and 0.85 <= c.scale <= 1.15 for c in cams)
    assert all(0.6 <= c.gain <= 1.4 and 0.8 <= c.gamma <= 1.25 for c in cams)
    assert all(max(abs(s) for s in c.shift_px) <= 8 and 1 <= c.noise_dn <= 4 for c in cams)
    assert all(10 <= c.seam_spacing_px <= 20 and 0 <= c.rim_rows <= 0.2 for c in cams)
    assert len({c.texture_seed for c in cams}) == 200
    wide = [random_camera_params(rng, profile="out_of_range") for _ in range(200)]
    assert max(abs(c.roll_deg) for c in wide) > 8
    assert random_camera_params(
        np.random.default_rng(1), profile="reference"
    ) == random_camera_params(np.random.default_rng(1))
    with pytest.raises(ValueError, match="profile"):
        random_camera_params(rng, profile="bogus")


def test_rejects_inconsistent_scene() -> None:
    scene = make_scene(4)
    bad = replace(scene, smoke=np.zeros(3))
    with pytest.raises(ValueError, match="smoke"):
        render_frames(bad, CAM, np.random.default_rng(0))
