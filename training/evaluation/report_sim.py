"""The simulator report: current statistics against the production log, camera contact sheet,
current plots per condition, and the generation speed.

`furnace simulate --report OUT` and `furnace demo` write `OUT/report.html` with PNGs beside it.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from simulator.config import CLASS_NAMES, CONDITIONS, EVIDENCE, SIM_VERSION, SimConfig  # noqa: E402
from simulator.dataset import RunSpec, generate  # noqa: E402
from simulator.faults import apply_faults  # noqa: E402
from simulator.stats import compare_with_log, episode_statistics, summarise  # noqa: E402
from simulator.types import Episode, FaultEvent  # noqa: E402

STATS_FURNACES = 96  # furnace-hours behind the statistics table (the clip share needs many)
PHASE_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")

# docs/design/furnace.md 7.9 acceptance ranges (normal segments, per phase).
ACCEPTANCE: tuple[tuple[str, str, float, float], ...] = (
    ("mean_over_setpoint", "mean / setpoint", 0.98, 1.02),
    ("std_over_setpoint", "std / setpoint", 0.09, 0.15),
    ("lag1_autocorr", "autocorrelation lag 1", 0.6, 0.85),
    ("lag20_autocorr", "autocorrelation lag 20", -0.15, 0.15),
    ("cross_phase_corr", "cross-phase correlation", 0.2, 0.4),
    ("imbalance_median", "imbalance median", 0.10, 0.18),
    ("imbalance_p95", "imbalance p95", 0.28, 0.45),
    ("clip_fraction", "share at the clip", 0.0, 0.02),
    ("double_dip_fraction", "two-phase simultaneous dips", 0.0, 0.002),
)


def current_figures(
    seed: int, furnaces: int = STATS_FURNACES, *, progress: bool = False
) -> dict[str, float]:
    """Statistics of event-free, log-matched furnaces (one hour each, current only)."""
    cfg = SimConfig(minutes=60.0, event_free_fraction=1.0, profile="reference", faults=False)
    spec = RunSpec(seed=seed, furnaces=furnaces, config=cfg)
    episodes = generate(spec, render=False)
    accs = [
        episode_statistics(ep)
        for ep in tqdm(episodes, total=furnaces, desc="current statistics", disable=not progress)
    ]
    figures = summarise(accs)
    figures["std_over_setpoint"] = figures["std_a"] / (
        figures["mean_a"] / figures["mean_over_setpoint"]
    )
    return figures


def generation_speed(seed: int) -> dict[str, float]:
    """Simulated seconds per wall second for one 30-min episode, with and without the camera."""
    cfg = SimConfig(minutes=30.0, event_free_fraction=0.0)
    spec = RunSpec(seed=seed, furnaces=2, config=cfg)
    out: dict[str, float] = {}
    for key, render in (("both_modalities", True), ("current_only", False)):
        t0 = time.perf_counter()
        for _ in generate(spec, render=render):
            pass
        out[f"x_real_time_{key}"] = 2 * cfg.minutes * 60.0 / (time.perf_counter() - t0)
    out["frames_per_s"] = out["x_real_time_both_modalities"] * cfg.camera_fps
    return out


def condition_episodes(seed: int) -> dict[str, Episode]:
    """One fault-free 20-min episode per condition, events forced, for pictures and plots."""
    out = {}
    for i, name in enumerate(CONDITIONS):
        cfg = SimConfig(
            minutes=20.0, event_free_fraction=0.0, max_events=1, condition=name, faults=False
        )
        out[name] = next(iter(generate(RunSpec(seed=seed * 100 + i, furnaces=1, config=cfg))))
    return out


def nuisance_episode(
    seed: int, kind: str, max_tries: int = 60
) -> tuple[Episode, tuple[float, float]]:
    """A normal episode holding nuisance `kind` (mist, power_cut, feeding), and its span."""
    cfg = SimConfig(minutes=20.0, event_free_fraction=1.0, faults=False)
    for k in range(max_tries):
        spec = RunSpec(seed=seed * 1000 + 500 + k, furnaces=1, config=cfg)
        ep = next(iter(generate(spec, render=False)))
        if kind == "mist":
            heavy = [m for m in ep.meta["mist"] if m["params"]["peak"] > 0.7]
            if heavy:
                return next(iter(generate(spec))), (heavy[0]["start_s"], heavy[0]["end_s"])
        else:
            found = [n for n in ep.nuisances if n["kind"] == kind and n["end_s"] < 1100.0]
            if found:
                return next(iter(generate(spec))), (found[0]["start_s"], found[0]["end_s"])
    msg = f"no episode with a {kind} nuisance in {max_tries} seeds"
    raise RuntimeError(msg)


def _frame_at(ep: Episode, t: float, frames: np.ndarray | None = None) -> np.ndarray:
    idx = int(np.clip(np.searchsorted(ep.t_frame, t), 0, ep.t_frame.shape[0] - 1))
    return (ep.frames if frames is None else frames)[idx]


def contact_sheet(
    conditions: dict[str, Episode],
    nuisances: dict[str, tuple[Episode, tuple[float, float]]],
    path: Path,
) -> None:
    """Rows of frames: each condition across its event, each nuisance, each camera fault."""
    rows: list[tuple[str, list[np.ndarray], list[str]]] = []
    n_cols = 6
    for name, ep in conditions.items():
        ev = ep.events[0]
        times = np.linspace(ev["onset_s"] - 30.0, ev["hold_end_s"], n_cols)
        if name == "eruption":
            times = np.linspace(ev["onset_s"] - 5.0, ev["end_s"] + 60.0, n_cols)
        frames = [_frame_at(ep, t) for t in times]
        labels = [f"t={t - ev['onset_s']:+.0f} s" for t in times]
        rows.append((name, frames, labels))
    for kind, (ep, (t0, t1)) in nuisances.items():
        times = np.linspace(t0 - 20.0, min(t1 + 90.0, ep.t_frame[-1]), n_cols)
        rows.append(
            (
                f"{kind} (normal)",
                [_frame_at(ep, t) for t in times],
                [f"{t - t0:+.0f} s" for t in times],
            )
        )
    base = next(iter(conditions.values()))
    faults = [
        FaultEvent("frozen", "camera", 100.0, 200.0),
        FaultEvent("black", "camera", 300.0, 400.0, seed=1),
        FaultEvent("occluded", "camera", 500.0, 600.0, value=0.8, seed=2),
    ]
    observed = apply_faults(replace(base, faults=faults))
    rows.append(
        (
            "camera faults",
            [_frame_at(base, t, observed.frames) for t in (90.0, 150.0, 350.0, 550.0)],
            ["healthy", "frozen", "black", "occluded"],
        )
    )
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols + 1.6, 1.75 * len(rows)))
    for r, (title, frames, labels) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(frames):
                ax.imshow(frames[c], interpolation="nearest")
                ax.set_title(labels[c], fontsize=7)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(title, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def current_plots(conditions: dict[str, Episode], path: Path) -> None:
    """Three-phase current around each condition event, labelled stretch shaded."""
    fig, axes = plt.subplots(len(conditions), 1, figsize=(11, 2.2 * len(conditions)))
    for ax, (name, ep) in zip(axes, conditions.items(), strict=True):
        ev = ep.events[0]
        lo = max(0.0, ev["onset_s"] - 120.0)
        hi = min(ep.t_cur[-1], ev["end_s"] + 240.0)
        sel = (ep.t_cur >= lo) & (ep.t_cur <= hi)
        t = ep.t_cur[sel] - ev["onset_s"]
        for p in range(3):
            ax.plot(t, ep.current[sel, p] / 1000.0, lw=0.6, color=PHASE_COLOURS[p], label="ABC"[p])
        ax.plot(t, ep.setpoint[sel].mean(1) / 1000.0, "k--", lw=0.8, label="setpoint")
        labelled = ep.label_cur[sel] > 0
        ax.fill_between(t, 0, 21, where=labelled, color="orange", alpha=0.15, label="labelled")
        ax.set_ylim(0, 21)
        ax.set_ylabel("kA")
        c, v = EVIDENCE[name]["current"], EVIDENCE[name]["camera"]
        ax.set_title(f"{name}  (evidence: current {c}, camera {v})", fontsize=9, loc="left")
        ax.legend(loc="lower left", fontsize=7, ncol=5)
    axes[-1].set_xlabel("seconds since onset")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row[key]
            if isinstance(value, bool):
                cls = "pass" if value else "fail"
                cells.append(f'<td class="{cls}">{"pass" if value else "FAIL"}</td>')
            elif isinstance(value, float):
                cells.append(f"<td>{value:.4g}</td>")
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(out: Path, *, seed: int = 0, progress: bool = True) -> Path:
    """Write `out/report.html` (+ PNGs and `report.json`). Returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5, desc="simulator report", disable=not progress)
    figures = current_figures(seed, progress=False)
    rows = compare_with_log(figures)
    acceptance = [
        {
            "statistic": label,
            "range": f"{lo:g} to {hi:g}",
            "simulated": figures[key],
            "pass": bool(lo <= figures[key] <= hi),
        }
        for key, label, lo, hi in ACCEPTANCE
    ]
    steps.update()
    speed = generation_speed(seed)
    steps.update()
    conditions = condition_episodes(seed)
    nuisances = {kind: nuisance_episode(seed, kind) for kind in ("mist", "feeding", "power_cut")}
    steps.update()
    contact_sheet(conditions, nuisances, out / "contact_sheet.png")
    steps.update()
    current_plots(conditions, out / "current_per_condition.png")
    steps.update()
    steps.close()
    summary = {
        "simulator_version": SIM_VERSION,
        "seed": seed,
        "statistics": figures,
        "comparison": rows,
        "acceptance": acceptance,
        "speed": speed,
        "all_pass": all(r["pass"] for r in rows) and all(a["pass"] for a in acceptance),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    ok = summary["all_pass"]
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>furnace-sentinel simulator report</title><style>
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#eee}}td.pass{{color:#070}}td.fail{{color:#b00;font-weight:bold}}
img{{max-width:100%;border:1px solid #ddd}}</style></head><body>
<h1>Simulator report</h1>
<p>Simulator {SIM_VERSION}, seed {seed}. Overall: <b>{
        "all figures pass" if ok else "SOME FIGURES FAIL"
    }</b>.
Classes: {", ".join(CLASS_NAMES)}.</p>
<h2>Current statistics against the production log</h2>
<p>{figures["hours"]:.1f} furnace-hours of normal operation ({STATS_FURNACES} log-matched
furnaces, <code>profile=reference</code>: setpoint 14.6-15.3 kA) against docs/design/furnace.md 2.1.
Pass: within
&plusmn;25 % of the reference figure, averaged over furnaces and phases.</p>
{
        _table(
            rows,
            [
                ("statistic", "statistic"),
                ("reference", "log"),
                ("simulated", "simulated"),
                ("rel_error", "relative error"),
                ("pass", "±25 %"),
            ],
        )
    }
<h3>Acceptance ranges (docs/design/furnace.md 7.9)</h3>
{
        _table(
            acceptance,
            [
                ("statistic", "statistic"),
                ("range", "target"),
                ("simulated", "simulated"),
                ("pass", "pass"),
            ],
        )
    }
<h2>Generation speed</h2>
<p>{speed["x_real_time_both_modalities"]:.0f}&times; real time with the camera at 2 fps
({speed["frames_per_s"]:.0f} frames/s), {speed["x_real_time_current_only"]:.0f}&times; for the
current alone, on this machine while writing the report.</p>
<h2>Camera: conditions, nuisances and faults</h2>
<p>Each condition across its event (time since onset); nuisances are labelled normal;
camera faults are health flags, never conditions. Electrode breakage is invisible on camera
by design (evidence none).</p><img src="contact_sheet.png">
<h2>Current per condition</h2><img src="current_per_condition.png">
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
