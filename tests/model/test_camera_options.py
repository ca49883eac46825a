"""Label-free camera options [ours]: physics input channels and the code-only hotness target."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.cmg import build_cmg
from model.config import CMGConfig
from model.features import (
    HOTNESS_CHANNELS,
    HOTSPOT_CHANNELS,
    HOTSPOT_STATS,
    PHYSICS_CHANNELS,
    RELATIVE_STATS,
    camera_inputs,
    hotness_target,
    hotspot_stats,
    hotspot_target,
    physics_channels,
)
from model.heads import DetectorHead
from model.scorer import ModalityScorer
from tests.model.factories import make_batch, make_tiny_cfg

PHYSICS = {"camera_channels": "physics"}
HOTNESS = {"code_target": "hotness"}
BOTH = {**PHYSICS, **HOTNESS}
HOTSPOT = {"code_target": "hotspot"}
STATS = {"camera_summary": "hotspot", "code_target": "hotspot"}
RELATIVE = {"camera_summary": "hotspot_relative", "code_target": "hotspot"}


def test_defaults_are_the_previous_model() -> None:
    cfg = CMGConfig()
    assert cfg.camera_channels == "rgb" and cfg.code_target == "none"
    assert cfg.camera_extra_channels == 0
    model = build_cmg(make_tiny_cfg())
    assert model.dec_h is None
    assert model.phi_v.stem.patch.weight.shape[1] == 6
    assert not any(k.startswith("dec_h") for k in model.state_dict())


def test_invalid_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="camera_channels"):
        make_tiny_cfg(camera_channels="hsv")
    with pytest.raises(ValueError, match="code_target"):
        make_tiny_cfg(code_target="frame")
    with pytest.raises(ValueError, match="code_target_weight"):
        make_tiny_cfg(code_target_weight=-1.0)


def test_physics_channels_shapes_and_zeros() -> None:
    x = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    cam = camera_inputs(x, torch.full((3,), 0.5), torch.full((3,), 0.2), channels="physics")
    assert cam.extra is not None
    assert cam.extra.shape == (2, 3, PHYSICS_CHANNELS, 16, 16)
    assert camera_inputs(x, torch.full((3,), 0.5), torch.full((3,), 0.2)).extra is None
    zeros = physics_channels(torch.zeros(2, 3, 3, 16, 16))
    assert bool((zeros == 0).all())
    target = hotness_target(torch.zeros(2, 3, 3, 16, 16), 4)
    assert target.shape == (6, HOTNESS_CHANNELS, 4, 4) and bool((target == 0).all())
    spot = hotspot_target(torch.zeros(2, 3, 3, 16, 16), 4)
    assert spot.shape == (6, HOTSPOT_CHANNELS, 4, 4) and bool((spot == 0).all())


def test_hotspot_target_keeps_a_shell_spot_and_ignores_the_rim() -> None:
    frame = torch.full((1, 1, 3, 32, 32), 60.0)
    frame[..., 0, 20:24, 12:16] = 250.0  # a red-hot blob on the shell
    frame[..., 1, 20:24, 12:16] = 140.0
    frame[..., 0, 0:4, 8:12] = 250.0  # the same blob in the rim rows (top quarter)
    frame[..., 1, 0:4, 8:12] = 140.0
    spot = hotspot_target(frame, 8)[0]  # (2, 8, 8)
    assert float(spot[0, 5, 3]) > 1.0  # shell spot, 4-px cell (5, 3)
    assert float(spot[0, :2].abs().max()) == 0.0  # rim rows are masked
    assert float(spot[1].abs().max()) == 0.0  # nothing saturated


def test_local_contrast_marks_a_local_hot_spot() -> None:
    frame = torch.full((1, 1, 3, 32, 32), 60.0)
    frame[..., 0, 12:16, 12:16] = 250.0  # an orange-red blob: red up, blue unchanged
    frame[..., 1, 12:16, 12:16] = 140.0
    phys = physics_channels(frame)[0, 0]  # (2, H, W)
    assert phys[0, 13, 13] > phys[0, 2, 2] + 1.0  # redness
    assert phys[1, 13, 13] > 0.5 and phys[1, 2, 2].abs() < 1e-6  # local contrast
    flat = physics_channels(torch.full((1, 1, 3, 32, 32), 200.0))[0, 0, 1]
    assert float(flat.abs().max()) < 1e-5  # uniform brightness (exposure) leaves no contrast
    target = hotness_target(frame, 8)[0]  # (3, 8, 8)
    assert int(target[0].argmax()) == 3 * 8 + 3  # the hot cell is the 4-px cell (3, 3)


def test_hotspot_stats_rise_with_a_shell_spot_and_vanish_on_black() -> None:
    plain = torch.full((1, 2, 3, 32, 32), 60.0)
    spot = plain.clone()
    spot[0, 1, 0, 20:24, 12:16] = 250.0  # a red-hot blob on the shell, second segment only
    spot[0, 1, 1, 20:24, 12:16] = 140.0
    s_plain, s_spot = hotspot_stats(plain), hotspot_stats(spot)  # (1, 2, 10)
    assert s_spot.shape == (1, 2, HOTSPOT_STATS)
    torch.testing.assert_close(s_spot[0, 0], s_plain[0, 0])  # per segment
    assert float(s_spot[0, 1, 2]) > float(s_plain[0, 1, 2]) + 1.0  # blob max
    assert float(s_spot[0, 1, 4]) > 0.0 == float(s_plain[0, 1, 4])  # share above mean + 2 std
    assert float(s_spot[0, 1, 7]) > float(s_plain[0, 1, 7])  # redness max
    assert bool((hotspot_stats(torch.zeros(1, 2, 3, 32, 32)) == 0).all())


def test_relative_hotspot_stats_see_the_spot_and_not_the_exposure() -> None:
    plain = torch.full((1, 2, 3, 32, 32), 60.0)
    plain[0, :, 0] = 80.0  # a reddish tint
    spot = plain.clone()
    spot[0, 1, 0, 20:24, 12:16] = 250.0  # a red-hot blob on the shell, second segment only
    spot[0, 1, 1, 20:24, 12:16] = 140.0
    r_plain, r_spot = (hotspot_stats(x, relative=True) for x in (plain, spot))
    assert r_spot.shape == (1, 2, RELATIVE_STATS)
    assert float(r_spot[0, 1, 0]) > float(r_plain[0, 1, 0]) + 1.0  # blob max above its mean
    assert float(r_spot[0, 1, 6]) > float(r_plain[0, 1, 6]) + 1.0  # redness max above mean
    # a brighter exposure (every pixel + 40) moves the absolute frame statistics, not these
    brighter = spot + 40.0
    absolute = hotspot_stats(brighter)[..., 6:] - hotspot_stats(spot)[..., 6:]
    assert float(absolute.abs().max()) > 1.0  # brightness mean and max
    torch.testing.assert_close(
        hotspot_stats(brighter, relative=True)[..., 6:], r_spot[..., 6:], atol=1e-4, rtol=0
    )
    assert bool((hotspot_stats(torch.zeros(1, 2, 3, 32, 32), relative=True) == 0).all())
    model = build_cmg(make_tiny_cfg(**RELATIVE))
    assert model.phi_v.relative_stats and model.phi_v.with_stats


@pytest.mark.parametrize("changes", [PHYSICS, HOTNESS, BOTH, HOTSPOT, STATS, RELATIVE])
def test_training_step_with_options_is_finite(changes: dict[str, str]) -> None:
    cfg = make_tiny_cfg(align="infonce", **changes)
    torch.manual_seed(0)
    model = build_cmg(cfg).train()
    out = model(*make_batch(cfg))
    assert bool(torch.isfinite(out.loss.total))
    out.loss.total.backward()
    grad = model.phi_v.stem.patch.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    if "code_target" in changes:
        assert float(out.diagnostics["rec_hotness"]) > 0.0
        assert model.dec_h is not None and model.dec_h.mlp[0].weight.grad is not None
    zeros = make_batch(cfg)._replace(x_v=torch.zeros_like(make_batch(cfg).x_v))
    model.eval()
    with torch.no_grad():
        assert bool(torch.isfinite(model(*zeros).loss.total))


@pytest.mark.parametrize("changes", [BOTH, STATS, RELATIVE], ids=["physics", "stats", "relative"])
def test_camera_option_scorers_export_to_onnx(tmp_path: Path, changes: dict[str, str]) -> None:
    cfg = make_tiny_cfg(**changes)
    torch.manual_seed(0)
    model = build_cmg(cfg).train()
    model(*make_batch(cfg))
    scorer = ModalityScorer(model.eval(), DetectorHead.from_config(cfg).eval(), "camera")
    path = tmp_path / "camera.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            scorer,
            (make_batch(cfg, B=2).x_v,),
            str(path),
            input_names=["x_v"],
            output_names=["codes", "quantized", "probs", "score", "segment_scores"],
            dynamic_axes={"x_v": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x_v in (make_batch(cfg, B=3, seed=5).x_v, torch.zeros_like(make_batch(cfg, B=1).x_v)):
        with torch.no_grad():
            ref = scorer(x_v)
        codes, _, probs, *_ = session.run(None, {"x_v": x_v.numpy()})
        np.testing.assert_array_equal(codes, ref.codes.numpy())
        np.testing.assert_allclose(probs, ref.probs.numpy(), atol=1e-4)
        assert np.isfinite(probs).all()
