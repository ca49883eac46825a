"""Statistics of simulated current, compared figure by figure with the public production log.

docs/design/furnace.md 2.1 gives the reference figures and 7.9 the acceptance ranges. Statistics are
taken on normal stretches with the power on (conditions, cuts and their ramps excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.config import CLIP_A, CURRENT_RATE_HZ, LOG_REFERENCE
from simulator.types import Episode

F64 = NDArray[np.float64]
SEGMENT = 512  # samples per spectral / autocorrelation segment (256 s at 2 Hz)

# (key, label, tolerance as relative error) of the comparison table; docs/design/furnace.md 2.1
# figures.
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("mean_a", "per-phase mean [A]"),
    ("mean_over_setpoint", "mean / setpoint"),
    ("std_a", "per-phase std [A]"),
    ("std60_median_a", "std within 60-s windows, median [A]"),
    ("lag1_autocorr", "autocorrelation at lag 1 (0.5 s)"),
    ("band_0.01_0.05", "power share 0.01-0.05 Hz"),
    ("band_0.05_0.2", "power share 0.05-0.2 Hz"),
    ("band_0.2_0.5", "power share 0.2-0.5 Hz"),
    ("cross_phase_corr", "cross-phase correlation"),
    ("imbalance_median", "imbalance (max-min)/mean, median"),
    ("imbalance_p95", "imbalance (max-min)/mean, p95"),
    ("clip_fraction", "share of samples at the 20 kA clip"),
    ("dips_per_10min", "dips below 60 % of median, per phase per 10 min"),
)
TOLERANCE = 0.25


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, stop) index pairs of True runs."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def normal_mask(ep: Episode) -> NDArray[np.bool_]:
    """Samples labelled normal, with full power (no cut, no ramp after one)."""
    power = ep.latent["power"]
    mask: NDArray[np.bool_] = (ep.label_cur == 0) & (power >= 1.0)
    return mask


def episode_statistics(ep: Episode) -> dict[str, Any]:
    """Raw accumulators of one episode's normal stretches (combine with `summarise`)."""
    mask = normal_mask(ep)
    x = ep.current.astype(np.float64)
    acc: dict[str, Any] = {
        "n": 0,
        "sum": np.zeros(3),
        "sum_setpoint": np.zeros(3),
        "values": [],
        "std60": [],
        "lag1": [],
        "lag20": [],
        "bands": [],
        "corr": [],
        "imbalance": [],
        "clip": 0,
        "dips": 0,
        "double_dips": 0,
        "seconds": 0.0,
    }
    edges = (0.01, 0.05, 0.2, 0.5)
    for start, stop in _runs(mask):
        seg = x[start:stop]
        if seg.shape[0] < 120:
            continue
        acc["n"] += seg.shape[0]
        acc["sum"] += seg.sum(0)
        acc["sum_setpoint"] += ep.setpoint[start:stop].astype(np.float64).sum(0)
        acc["values"].append(seg)
        acc["seconds"] += seg.shape[0] / CURRENT_RATE_HZ
        win = int(60 * CURRENT_RATE_HZ)
        for w0 in range(0, seg.shape[0] - win + 1, win):
            acc["std60"].append(seg[w0 : w0 + win].std(0))
        means = seg.mean(1)
        acc["imbalance"].append((seg.max(1) - seg.min(1)) / np.maximum(means, 1.0))
        acc["clip"] += int((seg >= CLIP_A).sum())
        median = np.median(seg, 0)
        low = seg < 0.6 * median[None, :]
        acc["dips"] += sum(len(_runs(low[:, p])) for p in range(3))
        acc["double_dips"] += int((low.sum(1) >= 2).sum())
        for s0 in range(0, seg.shape[0] - SEGMENT + 1, SEGMENT):
            block = seg[s0 : s0 + SEGMENT] - seg[s0 : s0 + SEGMENT].mean(0)
            var = (block**2).mean(0)
            acc["lag1"].append((block[1:] * block[:-1]).mean(0) / var)
            acc["lag20"].append((block[20:] * block[:-20]).mean(0) / var)
            power = np.abs(np.fft.rfft(block, axis=0)) ** 2
            freqs = np.fft.rfftfreq(SEGMENT, d=1.0 / CURRENT_RATE_HZ)
            total = power[1:].sum(0)
            shares = [
                power[(freqs >= lo) & (freqs < hi)].sum(0) / total
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            ]
            acc["bands"].append(np.stack(shares))  # (3 bands, 3 phases)
            c = np.corrcoef(block.T)
            acc["corr"].append(c[np.triu_indices(3, 1)].mean())
    return acc


def summarise(accs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Figures of the comparison table, averaged over phases and furnaces."""
    n = sum(a["n"] for a in accs)
    if n == 0:
        msg = "no normal stretch of at least 60 s to compute statistics on"
        raise ValueError(msg)
    total = sum(a["sum"] for a in accs)
    setpoint = sum(a["sum_setpoint"] for a in accs)
    values = np.concatenate([v for a in accs for v in a["values"]])
    bands = np.mean([b for a in accs for b in a["bands"]], axis=0).mean(1)  # (3,)
    imbalance = np.concatenate([i for a in accs for i in a["imbalance"]])
    seconds = sum(a["seconds"] for a in accs)
    # Per-furnace std (setpoints differ between furnaces; the log is one furnace).
    std60 = [s for a in accs for s in a["std60"]]
    stds = [np.concatenate(a["values"]).std(0).mean() for a in accs if a["values"]]
    return {
        "mean_a": float((total / n).mean()),
        "mean_over_setpoint": float((total / setpoint).mean()),
        "std_a": float(np.mean(stds)),
        "std60_median_a": float(np.median(np.stack(std60), 0).mean()),
        "lag1_autocorr": float(np.mean([x for a in accs for x in a["lag1"]])),
        "lag20_autocorr": float(np.mean([x for a in accs for x in a["lag20"]])),
        "band_0.01_0.05": float(bands[0]),
        "band_0.05_0.2": float(bands[1]),
        "band_0.2_0.5": float(bands[2]),
        "cross_phase_corr": float(np.mean([x for a in accs for x in a["corr"]])),
        "imbalance_median": float(np.median(imbalance)),
        "imbalance_p95": float(np.percentile(imbalance, 95)),
        "clip_fraction": float((values >= CLIP_A).mean()),
        "dips_per_10min": float(sum(a["dips"] for a in accs) / 3 / (seconds / 600.0)),
        "double_dip_fraction": float(sum(a["double_dips"] for a in accs) / n),
        "hours": float(seconds / 3600.0),
    }


def compare_with_log(figures: dict[str, float]) -> list[dict[str, Any]]:
    """Rows of the comparison table: reference, simulated, relative error, pass (+-25 %)."""
    rows = []
    for key, label in TABLE_ROWS:
        ref = LOG_REFERENCE[key]
        sim = figures[key]
        err = (sim - ref) / ref
        rows.append(
            {
                "key": key,
                "statistic": label,
                "reference": ref,
                "simulated": sim,
                "rel_error": err,
                "pass": bool(abs(err) <= TOLERANCE),
            }
        )
    return rows
