"""The current graph's input normalisation, measured and re-fitted on a site's normal data.

The current graph computes its per-segment features in the graph and standardises them with
two initializers (`inputs.current_mean`, `inputs.current_std`, model/normalize.py `InputNorm`)
before the encoder. A real furnace's normal operation differs from the simulated furnaces the
model was trained on (level, noise, a sensor that saturates in normal operation), and the
encoder reads that difference as a condition. A site calibration (`furnace calibrate`,
docs/site-calibration.md) maps the site's normal feature distribution onto the training
furnaces' normal one, feature by feature, by rewriting only those two initializers:

    z' = ((f - mu_site) * scale + mu_ref - m) / s,   scale = clip(sd_ref / sd_site, MIN_SCALE, 1)

with (m, s) the graph's own constants, (mu_ref, sd_ref) the training normal windows' mean of
per-recording means and pooled within-recording standard deviation (the bundle's
`current_feature_reference`, written at export), and (mu_site, sd_site) the site's. It is the
same graph with m' = mu_site - (mu_ref - m) / scale and s' = s / scale. A feature never spreads
more after the mapping than before (scale <= 1): a site quieter than the simulator keeps its
quiet. numpy, onnx and onnxruntime only (no torch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

NORM_MEAN = "inputs.current_mean"
NORM_STD = "inputs.current_std"
MIN_SCALE = (
    0.3  # a feature's spread shrinks at most to this share (dev set, docs/site-calibration.md)
)
TOLERANCE = 2.0  # a site mean within this many between-furnace std of the reference stays
TINY = 1e-6
BATCH = 1024


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # the serve image has onnxruntime only
        msg = "site calibration edits the ONNX graph: pip install onnx (the train extra has it)"
        raise ImportError(msg) from exc
    return onnx


def _feature_name(model: Any) -> str:
    """The tensor the graph standardises: the first input of the Sub that takes NORM_MEAN."""
    for node in model.graph.node:
        if node.op_type == "Sub" and len(node.input) == 2 and node.input[1] == NORM_MEAN:
            return str(node.input[0])
    msg = f"the graph has no Sub({NORM_MEAN}) node: not a furnace-sentinel current graph"
    raise ValueError(msg)


def norm_constants(path: str | Path) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The graph's (mean, std) feature standardisation constants."""
    onnx = _onnx()
    model = onnx.load(str(path))
    init = {i.name: i for i in model.graph.initializer}
    if NORM_MEAN not in init or NORM_STD not in init:
        msg = f"{path}: no {NORM_MEAN}/{NORM_STD} initializers"
        raise ValueError(msg)
    mean = onnx.numpy_helper.to_array(init[NORM_MEAN]).astype(np.float32)
    std = onnx.numpy_helper.to_array(init[NORM_STD]).astype(np.float32)
    return mean, std


class FeatureProbe:
    """The current graph with its pre-standardisation features as an extra output."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        onnx = _onnx()
        model = onnx.load(str(path))
        self.name = _feature_name(model)
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(self.name, onnx.TensorProto.FLOAT, None)
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )

    def features(
        self, x: NDArray[np.float32], baseline: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """(W, T, F) features of windows x (W, T, S, 3) A with baselines (W, 3 or 6) A."""
        out = []
        for i in range(0, len(x), BATCH):
            feeds = {
                "current_a": np.ascontiguousarray(x[i : i + BATCH], np.float32),
                "baseline_a": np.ascontiguousarray(baseline[i : i + BATCH], np.float32),
            }
            out.append(self.session.run([self.name], feeds)[0])
        if not out:
            msg = "no windows to compute features of"
            raise ValueError(msg)
        return np.concatenate(out).astype(np.float32)


def feature_reference(
    features: NDArray[np.float32], groups: Sequence[str] | NDArray[Any]
) -> dict[str, Any]:
    """The normal-operation reference a site calibration maps onto.

    Args:
        features: (W, T, F) features of normal windows (FeatureProbe.features).
        groups: (W,) the recording (or furnace) of each window.

    Returns:
        `current_feature_reference` of a manifest: per feature the mean of per-group means,
        the pooled within-group standard deviation, the standard deviation of the group means
        (between furnaces), and the counts.
    """
    g = np.asarray(groups)
    if len(g) != len(features) or not len(g):
        msg = f"{len(features)} windows and {len(g)} groups"
        raise ValueError(msg)
    flat = features.reshape(len(features), -1, features.shape[-1])
    means, variances, counts = [], [], []
    for name in np.unique(g):
        f = flat[g == name].reshape(-1, flat.shape[-1]).astype(np.float64)
        means.append(f.mean(axis=0))
        variances.append(f.var(axis=0))
        counts.append(len(f))
    m = np.stack(means)
    sds = np.sqrt(np.stack(variances))
    within = np.sqrt(np.average(sds**2, axis=0, weights=counts))
    return {
        "features": int(flat.shape[-1]),
        "mean": [round(float(v), 7) for v in m.mean(axis=0)],
        "within_std": [round(float(v), 7) for v in within],
        "within_std_q90": [round(float(v), 7) for v in np.quantile(sds, 0.9, axis=0)],
        "between_std": [round(float(v), 7) for v in m.std(axis=0)],
        "groups": len(means),
        "windows": len(g),
        "segments": int(sum(counts)),
    }


def refit(
    mean: NDArray[np.float32],
    std: NDArray[np.float32],
    reference: dict[str, Any],
    site: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.float32], dict[str, Any]]:
    """New standardisation constants mapping the site's normal features onto the reference.

    Args:
        mean, std: (F,) the graph's constants.
        reference: the bundle's `current_feature_reference`.
        site: (W, T, F) features of the site's normal windows.

    Returns:
        (mean', std', report): the constants to write and what changed (per-feature shift in
        reference within-std units, the scales, the features compressed most).
    """
    f = site.reshape(-1, site.shape[-1]).astype(np.float64)
    n_feat = len(mean)
    if f.shape[-1] != n_feat or int(reference.get("features", -1)) != n_feat:
        msg = (
            f"the graph standardises {n_feat} features, the site windows give {f.shape[-1]} "
            f"and the reference holds {reference.get('features')}: re-export the bundle"
        )
        raise ValueError(msg)
    mu_ref = np.asarray(reference["mean"], np.float64)
    sd_ref = np.asarray(reference["within_std_q90"], np.float64)
    between = np.asarray(reference["between_std"], np.float64)
    mu_s, sd_s = f.mean(axis=0), f.std(axis=0)
    scale = np.where(sd_s > TINY, np.clip(sd_ref / np.maximum(sd_s, TINY), MIN_SCALE, 1.0), 1.0)
    # the site's mean stays where a training furnace's could be; only the excess moves
    allowed = TOLERANCE * between
    target = mu_ref + np.clip(mu_s - mu_ref, -allowed, allowed)
    m, s = mean.astype(np.float64), std.astype(np.float64)
    # z' = ((f - mu_s) * scale + target - m) / s
    new_mean = mu_s - (target - m) / scale
    new_std = s / scale
    shift = (target - mu_s) / np.maximum(sd_s, TINY)
    order = np.argsort(scale)
    report = {
        "features": n_feat,
        "segments": int(len(f)),
        "max_abs_shift_sd": round(float(np.abs(shift).max()), 3),  # in site std units
        "shifted": int((np.abs(shift) > 1e-9).sum()),
        "mean_abs_shift_sd": round(float(np.abs(shift).mean()), 3),
        "scale": [round(float(v), 4) for v in scale],
        "compressed": [
            {"feature": int(j), "scale": round(float(scale[j]), 4)}
            for j in order[:5]
            if scale[j] < 0.999
        ],
    }
    return new_mean.astype(np.float32), new_std.astype(np.float32), report


def rewrite_normalisation(
    src: str | Path, dst: str | Path, mean: NDArray[np.float32], std: NDArray[np.float32]
) -> None:
    """Write the graph `src` to `dst` with new standardisation constants (nothing else)."""
    onnx = _onnx()
    model = onnx.load(str(src))
    out = copy.deepcopy(model)
    found = 0
    for init in out.graph.initializer:
        if init.name in (NORM_MEAN, NORM_STD):
            value = mean if init.name == NORM_MEAN else std
            if tuple(init.dims) != value.shape:
                msg = f"{init.name}: shape {tuple(init.dims)} in the graph, {value.shape} given"
                raise ValueError(msg)
            init.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), init.name))
            found += 1
    if found != 2:
        msg = f"{src}: no {NORM_MEAN}/{NORM_STD} initializers"
        raise ValueError(msg)
    onnx.checker.check_model(out)
    onnx.save(out, str(dst))
