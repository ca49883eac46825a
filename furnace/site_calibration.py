"""Calibrate a bundle on a site's unlabelled normal operation (`furnace calibrate`).

A model trained on simulated furnaces meets a real furnace whose normal operation differs
(level, noise, a current sensor that saturates at its range in normal operation) and reads
the difference as a condition. What depends on the site is re-fitted without labels
(docs/site-calibration.md):

1. **Current feature normalisation.** The current graph's standardisation constants are
   rewritten so that the site's normal features land on the training furnaces' normal ones
   (training/export/site.py; the reference is the bundle's `current_feature_reference`).
   The weights, the codebook and the camera graph stay as they are, so the shared codes and
   the zero-shot path keep their meaning.
2. **Per-modality thresholds.** With the new graph, the site's normal recordings are replayed
   through the service's own code path (`furnace.scorecard`: assembler, engine, alert policy)
   and each modality's thresholds are raised by the smallest factor of MARGIN_FACTORS (the
   alert calibration's rule 1 - (1 - t) / factor, the bundle's calibrated thresholds as the
   start) that keeps the false episodes per furnace-hour at or under the target in every
   setting the data allows (current only; with camera frames also camera only and both).
   When no factor suffices, stricter k-of-n policies of the alert calibration's grid are
   tried next.
3. A new verified bundle: new graph and golden outputs, a new model version, and a
   manifest `site_calibration` record of the data (files, sha256, hours), the changes and
   the expected false episodes per furnace-hour (observed, and the 95 % Poisson upper bound).

A share of each recording can be kept out (`holdout_fraction`): it is replayed only to
measure, before and after, what the operator would see on data the calibration never read.
No torch here; onnx is needed to edit the graph.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from furnace.alert_calibration import (
    KN_GRID,
    MARGIN_FACTORS,
    FurnaceRun,
    copy_bundle,
    setting_episodes,
)
from furnace.scorecard import stream_entries

if TYPE_CHECKING:
    from furnace.scorecard import Entries, ServiceSettings
    from service.alerting import AlertPolicy
    from service.bundle import Thresholds
    from service.engine import Engine
    from training.data.plant_csv import PlantCurrent

DEFAULT_TARGET_PER_10H = 1.0
MIN_WINDOWS = 120  # site windows (4 min of current after the baseline warm-up) at the least
CONFIDENCE = 0.95
WARMUP_MARGIN_S = 4.0  # a held-out part starts this much before baseline + window history


@dataclass
class NormalPart:
    """One stretch of normal operation as stream entries."""

    name: str  # recording name, with a suffix for a held-out part
    source: str  # the file or dataset it came from
    entries: Entries
    hours: float  # time that counts (after the warm-up of a held-out part)
    count_from: float  # Unix s: episodes opened before this do not count (warm-up)
    modalities: tuple[str, ...]


@dataclass
class NormalSource:
    """One recording: the part to calibrate on and the part kept out (or None)."""

    calibrate: NormalPart
    holdout: NormalPart | None
    summary: dict[str, Any]


# --------------------------------------------------------------------------- reading


def _split(
    name: str,
    source: str,
    t_cur: NDArray[np.float64],
    current: NDArray[np.float32],
    t_frame: NDArray[np.float64],
    frames: NDArray[np.uint8],
    holdout_fraction: float,
    warmup_s: float,
) -> tuple[NormalPart, NormalPart | None]:
    """The calibration part (the first 1 - holdout_fraction of the time) and the held-out
    part (the rest, read from `warmup_s` earlier so its first windows have a baseline; those
    seconds do not count)."""
    mods = ("current", "camera") if len(t_frame) else ("current",)
    start, end = float(t_cur[0]), float(t_cur[-1]) + 1e-3
    cut = end if holdout_fraction <= 0 else start + (1.0 - holdout_fraction) * (end - start)

    def part(lo: float, hi: float, count_from: float, suffix: str) -> NormalPart:
        c = (t_cur >= lo) & (t_cur < hi)
        f = (t_frame >= lo) & (t_frame < hi)
        hours = max(0.0, min(hi, end) - max(count_from, start)) / 3600.0
        ents = stream_entries(t_cur[c], current[c], t_frame[f], frames[f])
        return NormalPart(name + suffix, source, ents, hours, count_from, mods)

    cal = part(start, cut, start, "")
    hold = part(cut - warmup_s, end, cut, "@holdout") if holdout_fraction > 0 else None
    return cal, hold


def read_normal(
    path: str | Path,
    *,
    holdout_fraction: float = 0.0,
    warmup_s: float = 140.0,
    current_columns: Sequence[int] | None = None,
    time_column: int | None = None,
    rate_hz: float | None = None,
) -> list[NormalSource]:
    """The normal recordings of a plant CSV export (a file) or an FMF-layout dataset (a
    folder: every recording, clean view, camera frames where it has them).

    Raises:
        training.data.plant_csv.PlantCsvError: an unreadable CSV.
        ValueError: a folder that is no FMF layout.
        FileNotFoundError: nothing at `path`.
    """
    from training.data.plant_csv import read_plant_csv

    p = Path(path)
    if not p.exists():
        msg = f"normal data {p} does not exist: give a plant CSV export or an FMF dataset folder"
        raise FileNotFoundError(msg)
    if not 0.0 <= holdout_fraction < 1.0:
        msg = f"the held-out fraction must be in [0, 1), got {holdout_fraction}"
        raise ValueError(msg)
    out = []
    if p.is_file():
        pc: PlantCurrent = read_plant_csv(
            p, current_columns=current_columns, time_column=time_column, rate_hz=rate_hz
        )
        _check_units(pc.current, str(p))
        empty_t, empty_f = np.zeros(0), np.zeros((0, 64, 64, 3), np.uint8)
        cal, hold = _split(
            p.stem, str(p), pc.t, pc.current, empty_t, empty_f, holdout_fraction, warmup_s
        )
        out.append(NormalSource(cal, hold, {"kind": "plant_csv", **pc.summary()}))
        return out
    from training.data.fmf import read_fmf, resolve_root
    from training.export.bundle import sha256_file

    root = resolve_root(p)
    for rec in read_fmf(root, camera_fps=None):
        t0 = rec.start_epoch
        _check_units(rec.current, f"{root}/{rec.name}")
        cal, hold = _split(
            rec.name,
            str(root),
            rec.t_cur + t0,
            rec.current,
            rec.t_frame + t0,
            rec.frames,
            holdout_fraction,
            warmup_s,
        )
        summary = {
            "kind": "fmf",
            "dataset": str(root),
            "recording": rec.name,
            "sha256": sha256_file(root / "currents" / f"{rec.name}.csv"),
            "rows": len(rec.t_cur),
            "frames": len(rec.t_frame),
            "hours": round(float(rec.t_cur[-1] - rec.t_cur[0]) / 3600.0, 4),
        }
        out.append(NormalSource(cal, hold, summary))
    return out


def _check_units(current: NDArray[np.float32], where: str) -> None:
    level = float(np.nanmedian(current)) if np.isfinite(current).any() else math.nan
    if not math.isfinite(level):
        msg = f"{where}: no finite current sample"
        raise ValueError(msg)
    if level < 100.0:
        msg = (
            f"{where}: the median phase current is {level:g}: currents are expected in A "
            "(an EFMF runs at kA); convert a kA export to A first"
        )
        raise ValueError(msg)


# --------------------------------------------------------------------------- replay


def replay(
    engine: Engine,
    parts: Sequence[NormalPart],
    service: ServiceSettings,
    desc: str = "replay",
    progress: bool = False,
) -> list[FurnaceRun]:
    """Each part replayed under every setting its sensors allow."""
    from tqdm import tqdm

    from furnace.alert_calibration import replay_entries

    runs = []
    for part in tqdm(parts, desc=desc, unit="recording", disable=not progress):
        settings = (
            ["current_only", "camera_only", "both"]
            if len(part.modalities) == 2
            else ["current_only"]
        )
        run = replay_entries(engine, part.entries, "site", part.name, part.hours, settings, service)
        for s in settings:
            run.windows[s] = [w for w in run.windows[s] if w.window_end >= part.count_from]
        runs.append(run)
    return runs


def site_features(engine: Engine, parts: Sequence[NormalPart], service: ServiceSettings) -> Any:
    """(W, T, F) current features (before standardisation) of the parts' healthy windows."""
    from furnace.scorecard import assemble
    from training.export.site import FeatureProbe

    xs, bs = [], []
    for part in parts:
        for closed in assemble(part.entries, "site", engine.manifest.window, ["current"], service):
            for w in closed:
                if w.current is not None and w.current.health == "ok":
                    xs.append(w.current.x)
                    bs.append(w.current.baseline)
    if len(xs) < MIN_WINDOWS:
        minutes = MIN_WINDOWS * engine.manifest.window.hop_seconds / 60.0
        msg = (
            f"{len(xs)} healthy current windows in the normal data; the calibration needs at "
            f"least {MIN_WINDOWS} ({minutes:.0f} min of current after the first "
            f"{engine.manifest.window.baseline_seconds:.0f} s)"
        )
        raise ValueError(msg)
    probe = FeatureProbe(engine.manifest.folder / engine.manifest.graphs["current"].file)
    return probe.features(np.stack(xs).astype(np.float32), np.stack(bs).astype(np.float32))


def raised(thr: Thresholds, g_current: float, g_camera: float) -> Thresholds:
    """Each modality's thresholds raised by its factor (1 - (1 - t) / g), alone ones too; a
    max-ratio fused threshold stays (the raised modality thresholds already lower the
    ratios)."""
    c = 1.0 - (1.0 - thr.current) / g_current
    v = 1.0 - (1.0 - thr.camera) / g_camera
    if thr.fusion != "max_ratio":
        return replace(thr, current=c, camera=v)
    s_c = 1.0 - (1.0 - thr.current * thr.current_alone) / g_current
    s_v = 1.0 - (1.0 - thr.camera * thr.camera_alone) / g_camera
    return replace(thr, current=c, camera=v, current_alone=s_c / c, camera_alone=s_v / v)


def false_episodes(
    runs: Sequence[FurnaceRun],
    thr: Thresholds,
    policy: AlertPolicy,
    names: tuple[str, ...],
) -> dict[str, dict[str, float]]:
    """Per setting: furnace-hours, episodes (all false: the data is normal) and per hour."""
    out: dict[str, dict[str, float]] = {}
    for s in dict.fromkeys(setting for run in runs for setting in run.windows):
        with_s = [run for run in runs if s in run.windows]
        h = sum(run.furnace_hours for run in with_s)
        n = len(setting_episodes(with_s, s, thr, policy, names))
        out[s] = {
            "furnace_hours": round(h, 4),
            "false_episodes": n,
            "false_episodes_per_hour": round(n / h, 3) if h else 0.0,
            "upper_95_per_hour": round(poisson_upper(n) / h, 3) if h else 0,
        }
    return out


def poisson_upper(k: int, confidence: float = CONFIDENCE) -> float:
    """The upper `confidence` bound on a Poisson mean after observing k events (exact: the
    mean at which P(X <= k) = 1 - confidence; 3.0 for k = 0)."""

    def cdf(mu: float) -> float:
        term, total = math.exp(-mu), math.exp(-mu)
        for i in range(1, k + 1):
            term *= mu / i
            total += term
        return total

    lo, hi = 0.0, 10.0 + 10.0 * k
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1.0 - confidence else (lo, mid)
    return hi


# --------------------------------------------------------------------------- calibrate


@dataclass
class Choice:
    g_current: float
    g_camera: float
    policy: AlertPolicy
    measured: dict[str, dict[str, float]]
    met: bool


def choose(
    runs: Sequence[FurnaceRun],
    base: Thresholds,
    policy: AlertPolicy,
    names: tuple[str, ...],
    target_per_hour: float,
    camera: bool,
) -> Choice:
    """The loosest (k, n) then factors meeting the target in every setting (module doc)."""
    from service.alerting import AlertPolicy

    kns = [(policy.k, policy.n)] + [kn for kn in KN_GRID if kn[0] / kn[1] > policy.k / policy.n]
    cams = MARGIN_FACTORS if camera else (1.0,)
    grid = sorted(
        ((gc, gv) for gc in MARGIN_FACTORS for gv in cams), key=lambda g: (max(g), sum(g))
    )
    last: Choice | None = None
    for k, n in kns:
        pol = AlertPolicy(k=k, n=n, m=policy.m)
        for gc, gv in grid:
            measured = false_episodes(runs, raised(base, gc, gv), pol, names)
            met = all(
                o["false_episodes_per_hour"] <= target_per_hour + 1e-12 for o in measured.values()
            )
            last = Choice(gc, gv, pol, measured, met)
            if met:
                return last
    assert last is not None
    return last


def calibrate_site(
    bundle: str | Path,
    normal: Sequence[str | Path],
    out: str | Path,
    *,
    target_per_10h: float = DEFAULT_TARGET_PER_10H,
    holdout_fraction: float = 0.0,
    current_columns: Sequence[int] | None = None,
    time_column: int | None = None,
    rate_hz: float | None = None,
    signing_key: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Calibrate `bundle` on normal recordings into a new bundle at `out` (module doc).

    Returns:
        The manifest's `site_calibration` record plus `bundle` (the folder written) and
        `model_version`.

    Raises:
        ValueError: no reference in the bundle, too little data, an `out` that is not empty,
            an unreadable source (training.data.plant_csv.PlantCsvError is one).
        FileNotFoundError: the bundle or a source does not exist.
    """
    from furnace.scorecard import service_settings
    from service.alerting import resolve_policy
    from service.engine import Engine
    from training.export.bundle import rewrite_manifest, write_manifest
    from training.export.site import norm_constants, refit, rewrite_normalisation

    t0 = time.perf_counter()
    if target_per_10h < 0 or not math.isfinite(target_per_10h):
        msg = f"the target must be a finite number >= 0, got {target_per_10h}"
        raise ValueError(msg)
    src = Path(bundle)
    if not src.is_dir():
        msg = f"bundle folder {src} does not exist"
        raise FileNotFoundError(msg)
    key = _signing_key(signing_key)
    engine = Engine(src)
    manifest = dict(engine.manifest.raw)
    reference = manifest.get("current_feature_reference")
    if not isinstance(reference, dict):
        msg = (
            f"{src}/manifest.json has no current_feature_reference (exported before site "
            "calibration existed): re-export the run with `furnace export`"
        )
        raise ValueError(msg)
    spec = engine.manifest.window
    warmup = spec.baseline_seconds + spec.window_seconds + WARMUP_MARGIN_S
    sources: list[NormalSource] = []
    for path in normal:
        sources += read_normal(
            path,
            holdout_fraction=holdout_fraction,
            warmup_s=warmup,
            current_columns=current_columns,
            time_column=time_column,
            rate_hz=rate_hz,
        )
    cal_parts = [s.calibrate for s in sources]
    hold_parts = [s.holdout for s in sources if s.holdout is not None]
    camera = any(len(p.modalities) == 2 for p in cal_parts)
    _, service = service_settings(str(src))
    names = engine.manifest.class_names
    policy = resolve_policy(engine.manifest.alert_policy)
    thr_before = engine.manifest.thresholds

    # before: the bundle as shipped, on the same data
    before = {
        "calibration": false_episodes(
            replay(engine, cal_parts, service, "shipped bundle", progress),
            thr_before,
            policy,
            names,
        )
    }
    if hold_parts:
        before["holdout"] = false_episodes(
            replay(engine, hold_parts, service, "shipped bundle, held out", progress),
            thr_before,
            policy,
            names,
        )

    # 1. the current graph's normalisation
    feats = site_features(engine, cal_parts, service)
    graph = engine.manifest.graphs["current"].file
    mean, std = norm_constants(src / graph)
    new_mean, new_std, norm_report = refit(mean, std, reference, feats)
    folder = copy_bundle(src, Path(out))
    rewrite_normalisation(src / graph, folder / graph, new_mean, new_std)
    _golden(folder, manifest["golden"], graph)
    manifest.update(
        name=folder.name,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        site_calibration={"status": "normalisation written, thresholds pending"},
    )
    graphs = [g.file for g in engine.manifest.graphs.values()]
    if engine.manifest.memory is not None:  # memory heads: listed, hashed and stamped too
        graphs += [g.file for g in engine.manifest.memory.graphs.values()]
    write_manifest(folder, manifest, graphs=graphs, signing_key=key)

    # 2. thresholds (and, if needed, a stricter k of n) on the new graph
    calibrated = Engine(folder)
    runs = replay(calibrated, cal_parts, service, "calibrated bundle", progress)
    chosen = choose(runs, thr_before, policy, names, target_per_10h / 10.0, camera)
    thr = raised(thr_before, chosen.g_current, chosen.g_camera)
    after = {"calibration": chosen.measured}
    if hold_parts:
        after["holdout"] = false_episodes(
            replay(calibrated, hold_parts, service, "calibrated, held out", progress),
            thr,
            chosen.policy,
            names,
        )
    cal_hours = sum(p.hours for p in cal_parts)
    cal_false = max(int(o["false_episodes"]) for o in chosen.measured.values())
    record = {
        "source_model_version": engine.manifest.model_version,
        "normal": [s.summary for s in sources],
        "calibration_hours": round(cal_hours, 4),
        "holdout_fraction": holdout_fraction,
        "holdout_hours": round(sum(p.hours for p in hold_parts), 4),
        "target_false_episodes_per_hour": target_per_10h / 10.0,
        "met_target": chosen.met,
        "current_normalisation": {k: v for k, v in norm_report.items() if k != "scale"},
        "current_scale": norm_report["scale"],
        "threshold_factors": {"current": chosen.g_current, "camera": chosen.g_camera},
        "alert_policy": {"k": chosen.policy.k, "n": chosen.policy.n, "m": chosen.policy.m},
        "thresholds_before": _values(thr_before),
        "measured_before": before,
        "measured": after,
        "expected_false_episodes_per_hour": round(cal_false / cal_hours, 3) if cal_hours else None,
        "expected_upper_95_per_hour": round(poisson_upper(cal_false) / cal_hours, 3)
        if cal_hours
        else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if not chosen.met:
        record["note"] = (
            f"no threshold factor up to {MARGIN_FACTORS[-1]:g} and no k of n in the grid meets "
            f"{target_per_10h:g} false episodes per 10 furnace-hours on the normal data; the "
            "strictest candidate was written"
        )
    manifest = dict(calibrated.manifest.raw)
    manifest["thresholds"] = {**manifest["thresholds"], **_values(thr)}
    if "alert_policy" in manifest and isinstance(manifest["alert_policy"], dict):
        manifest["alert_policy"] = {
            **manifest["alert_policy"],
            "k": chosen.policy.k,
            "n": chosen.policy.n,
            "m": chosen.policy.m,
        }
    manifest["site_calibration"] = record
    rewrite_manifest(folder, manifest, signing_key=key)
    return {
        **record,
        "bundle": str(folder),
        "model_version": manifest["model_version"],
        "thresholds": _values(thr),
    }


def _values(thr: Thresholds) -> dict[str, float]:
    out = {"current": thr.current, "camera": thr.camera, "fused": thr.fused}
    if thr.fusion == "max_ratio":
        out |= {"current_alone": thr.current_alone, "camera_alone": thr.camera_alone}
    return out


def _signing_key(path: str | Path | None) -> Any:
    if path is None:
        return None
    from training.export.signing import load_signing_key

    return load_signing_key(path)


def _golden(folder: Path, golden: str, graph: str) -> None:
    """Recompute the current graph's golden outputs with the rewritten graph."""
    import onnxruntime as ort

    path = folder / golden
    with np.load(path) as g:
        data = {k: g[k] for k in g.files}
    sess = ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
    feeds = {i.name: data[f"current/{i.name}"] for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    for name, value in zip(names, sess.run(names, feeds), strict=True):
        data[f"current/{name}"] = value
    np.savez_compressed(path, **data)


def format_summary(record: dict[str, Any]) -> str:
    """What `furnace calibrate` prints."""
    n = record["current_normalisation"]
    f = record["threshold_factors"]
    p = record["alert_policy"]
    lines = [
        f"site bundle {record['bundle']} ({record['model_version']}) from "
        f"{record['source_model_version']}",
        f"normal data: {len(record['normal'])} recording(s), {record['calibration_hours']:.2f} "
        f"furnace-hours calibrated on, {record['holdout_hours']:.2f} held out",
        f"current normalisation: {n['features']} features re-fitted on {n['segments']} "
        f"segments; largest shift {n['max_abs_shift_sd']:.2f} sd, "
        + (
            "compressed most: "
            + ", ".join(f"#{c['feature']} x{c['scale']:g}" for c in n["compressed"])
            if n["compressed"]
            else "none compressed"
        ),
        f"thresholds raised by current x{f['current']:g}, camera x{f['camera']:g}; alert "
        f"policy {p['k']} of {p['n']}, close after {p['m']}",
        "",
        "| data | setting | furnace-h | false episodes before | after |",
        "|---|---|---|---|---|",
    ]
    for part in ("calibration", "holdout"):
        if part not in record["measured"]:
            continue
        for s, o in record["measured"][part].items():
            b = record["measured_before"][part].get(s, {})
            lines.append(
                f"| {part} | {s} | {o['furnace_hours']:.2f} | {b.get('false_episodes', '—')} "
                f"| {o['false_episodes']} |"
            )
    lines += [
        "",
        f"expected false episodes per furnace-hour: {record['expected_false_episodes_per_hour']}"
        f" (95 % upper bound {record['expected_upper_95_per_hour']}, from "
        f"{record['calibration_hours']:.2f} h); target "
        f"{record['target_false_episodes_per_hour']:g}: "
        + ("met" if record["met_target"] else "NOT MET"),
    ]
    if record.get("note"):
        lines.append(f"NOTE: {record['note']}")
    return "\n".join(lines)
