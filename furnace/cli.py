"""The `furnace` command line: one entry point, one subcommand per job.

Subcommands import their package lazily, so `furnace serve` never loads torch and
`furnace simulate` never loads the service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from simulator.config import CONDITIONS


def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from simulator.config import SimConfig
    from simulator.dataset import RunSpec

    if args.out is None and args.report is None:
        print(
            "furnace simulate: give --out DIR (a dataset), --report DIR (the simulator "
            "report), or both",
            file=sys.stderr,
        )
        return 2
    if args.out is not None:
        from simulator.dataset import generate
        from training.data.fmf_write import write_fmf

        cfg = SimConfig(
            minutes=args.minutes,
            camera_fps=args.camera_fps,
            profile=args.profile,
            faults=not args.no_faults,
            condition=args.condition,
            event_free_fraction=args.event_free_fraction,
        )
        spec = RunSpec(
            seed=args.seed,
            furnaces=args.furnaces,
            episodes_per_furnace=args.episodes_per_furnace,
            config=cfg,
        )
        t0 = time.perf_counter()
        run = {"command": "furnace simulate", "seed": spec.seed, "furnaces": spec.furnaces}
        run |= {"episodes_per_furnace": spec.episodes_per_furnace, "config": asdict(cfg)}
        root = write_fmf(
            generate(spec),
            args.out,
            test_fraction=args.test_fraction,
            total=spec.n_episodes,
            run=run,
        )
        seconds = time.perf_counter() - t0
        simulated = spec.n_episodes * cfg.minutes * 60.0
        print(
            f"wrote {spec.n_episodes} episodes ({simulated / 3600:.2f} h of furnace time) "
            f"to {root} in {seconds:.1f} s ({simulated / seconds:.0f}x real time)"
        )
    if args.report is not None:
        from training.evaluation.report_sim import write_report

        path = write_report(Path(args.report), seed=args.seed, progress=True)
        print(f"simulator report: {path}")
    return 0


def _dataset_info(args: argparse.Namespace) -> int:
    from training.data.fmf_info import dataset_info, format_dataset_info

    root = Path(args.dir)
    if not root.exists():
        print(f"furnace dataset info: {root} does not exist", file=sys.stderr)
        return 2
    info = dataset_info(root)
    print(json.dumps(info, indent=2) if args.json else format_dataset_info(info))
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from training.config import load_config
    from training.run import train_run

    cfg = load_config(args.config)
    changes = {}
    if args.label_modality:
        changes["label_modality"] = args.label_modality
    if args.steps:
        changes["steps"] = args.steps
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        cfg = replace(cfg, train=replace(cfg.train, **changes))
    path = train_run(args.data, args.out, cfg, progress=True)
    print(f"run saved: {path}  (log: {path.parent / 'train_log.json'})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluation.evaluate import evaluate

    ablations = {}
    for item in args.ablation or []:
        what, _, run = item.partition("=")
        if not run:
            print(f"furnace evaluate: --ablation wants WHAT=RUN_DIR, got {item!r}", file=sys.stderr)
            return 2
        ablations[what] = run
    metrics = evaluate(
        args.run, args.data, args.out, ablations=ablations, baselines=not args.no_baselines
    )
    width = max(len(k) for k in metrics["settings"])
    print(f"{'setting':{width}s}  macro_f1  all_six  auroc   fdr    mdr    delay_s")
    for name, row in metrics["settings"].items():
        print(
            f"{name:{width}s}  {row['macro_f1']:8.3f}  {row['macro_f1_all']:7.3f}  "
            f"{row['auroc']:5.3f}  {row['fdr']:5.3f}  {row['mdr']:5.3f}  {row['delay_s']:7.1f}"
        )
    print(
        f"\nmetrics: {Path(args.out) / 'metrics.json'}   report: {Path(args.out) / 'report.html'}"
    )
    return 0


def _scorecard(args: argparse.Namespace) -> int:
    from furnace.scorecard import format_table, run_scorecard

    if not Path(args.data).exists():
        print(f"furnace scorecard: {args.data} does not exist", file=sys.stderr)
        return 2
    result = run_scorecard(
        args.bundle, args.data, args.out, modalities=args.modalities, progress=True
    )
    print(
        f"bundle {result['bundle']} ({result['model_version']}), {len(result['furnaces'])} furnaces"
    )
    print(format_table(result))
    out = Path(args.out)
    print(f"\nscorecard: {out / 'scorecard.json'}   timelines: {out / 'scorecard.html'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from furnace.demo import run_demo

    scenario = Path(args.scenario) if args.scenario else None
    return run_demo(seconds=args.seconds, speed=args.speed, scenario_path=scenario)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.main import create_app
    from service.server import server_config
    from service.settings import Settings, bundle_problem, describe_errors

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"furnace serve: {describe_errors(exc)} (docs/configuration.md)", file=sys.stderr)
        return 2
    problem = bundle_problem(settings)
    if problem is not None:  # before uvicorn, whose failed startup prints a long traceback
        print(f"furnace serve: {problem}", file=sys.stderr)
        return 2
    app = create_app(settings)
    # request deadlines, a connection cap, keep-alive and header limits (service/server.py)
    uvicorn.Server(server_config(app, settings)).run()
    return 0


def _export(args: argparse.Namespace) -> int:
    from service.bundle import verify_bundle
    from training.export import export_bundle

    per_modality = {"current": args.head_current, "camera": args.head_camera}
    path = export_bundle(
        args.run,
        args.out,
        data_dir=args.data,
        head=args.head,
        heads={m: h for m, h in per_modality.items() if h is not None},
        metrics_path=args.metrics,
        signing_key=args.signing_key,
    )
    manifest = verify_bundle(path.parent)  # the service's own reader must accept it
    raw = json.loads(path.read_text())
    size = sum((path.parent / f).stat().st_size for f in manifest.files)
    print(f"bundle {path.parent}  model_version {manifest.model_version}  {size / 1e6:.2f} MB")
    if args.signing_key is None:
        print(
            "  unsigned (no --signing-key / FURNACE_SIGNING_KEY): the service serves it only "
            "with FURNACE_ALLOW_UNSIGNED_BUNDLES=true (docs/export.md, Signing)"
        )
    for m, fig in raw["parity"].items():
        print(
            f"  {m:7s} ORT vs torch on {fig['windows']} held-out windows: codes equal "
            f"{fig['code_agreement']:.4%}, max |dp| {fig['max_prob_diff']:.1e}"
        )
    thr = manifest.thresholds
    print(
        f"  head '{manifest.head}', thresholds current {thr.current:.3f} camera {thr.camera:.3f}"
        f" fused {thr.fused:.3f} ({thr.fusion}; false-alarm rate {thr.target_far:g} on"
        " validation normals)"
    )
    if args.no_alert_calibration:
        return 0
    data = args.data or ((raw.get("training") or {}).get("data") or {}).get("path")
    if data is None or not _has_sentinel(Path(data)):
        print(
            f"  alert calibration skipped: {data} is no simulated dataset with events "
            "(sentinel/); run furnace calibrate-alerts --bundle DIR --data DIR later"
        )
        return 0
    return _run_alert_calibration(
        path.parent, [data], None, args.target_false_per_10h, None, args.signing_key
    )


def _has_sentinel(data: Path) -> bool:
    return (data / "pixel-level" / "sentinel").is_dir() or (data / "sentinel").is_dir()


def _run_alert_calibration(
    bundle: Path,
    data: list[str] | None,
    furnaces: list[str] | None,
    target: float,
    out: str | None,
    signing_key: str | None = None,
    adaptation: bool = True,
) -> int:
    from furnace.alert_calibration import calibrate_bundle, format_summary

    record = calibrate_bundle(
        bundle,
        data=data,
        furnaces=furnaces,
        target_per_10h=target,
        out=out,
        progress=True,
        signing_key=signing_key,
        adaptation=adaptation,
    )
    source = record["calibration_data"]
    print(
        f"alert calibration on {len(source['furnaces'])} furnaces of {source['path']} "
        f"({source['furnace_hours']:.2f} furnace-hours, replay {source['replay_seconds']:.0f} s, "
        f"search {source['search_seconds']:.0f} s over {source['candidates_evaluated']} "
        f"candidates); written to {record['bundle']}/manifest.json"
    )
    print(format_summary(record))
    return 0


def _calibrate_alerts(args: argparse.Namespace) -> int:
    return _run_alert_calibration(
        Path(args.bundle),
        args.data,
        args.furnaces,
        args.target_false_per_10h,
        args.out,
        args.signing_key,
        not args.no_adaptation,
    )


def _memory(args: argparse.Namespace) -> int:
    from training.export.memory import add_memory
    from training.memory import MemoryConfig

    cfg = MemoryConfig(slots=args.slots, stride_windows=args.stride, epochs=args.epochs)
    memory = add_memory(
        args.bundle,
        args.data,
        out=args.out,
        cfg=cfg,
        signing_key=args.signing_key,
        threads=args.threads,
        role=args.role,
    )
    folder = args.out or args.bundle
    seconds = memory["slots"] * memory["stride_windows"] * memory["hop_seconds"]
    print(
        f"memory heads added to {folder}: {memory['slots']} windows over the last "
        f"{seconds:.0f} s, in {memory['training']['seconds']:.0f} s"
    )
    for m in ("current", "camera"):
        head = memory["heads"][m]
        fig = memory["validation"][head]
        print(
            f"  {m:7s} head '{head}': validation macro-F1 {fig['macro_f1']:.3f}, "
            f"ORT vs torch max |dp| {memory['parity'][m]['max_prob_diff']:.1e}"
        )
    if args.role == "name":
        print("  role 'name': the window heads still decide; thresholds and alert policy kept")
        return 0
    if args.no_alert_calibration:
        print(f"  alert policy dropped: run furnace calibrate-alerts --bundle {folder}")
        return 0
    return _run_alert_calibration(Path(folder), [args.data], None, 1.0, None, args.signing_key)


def _columns(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        msg = f"--current-columns {text!r}: give three 0-based column numbers, e.g. 0,1,2"
        raise ValueError(msg) from None


def _import(args: argparse.Namespace) -> int:
    from training.data.plant_csv import read_plant_csv, write_fmf

    pc = read_plant_csv(
        args.csv,
        current_columns=_columns(args.current_columns),
        time_column=args.time_column,
        rate_hz=args.rate_hz,
    )
    root = write_fmf(pc, args.out, name=args.name)
    s = pc.summary()
    print(
        f"imported {s['rows']} rows ({s['hours'] * 60:.1f} min at {s['rate_hz']:g} Hz, "
        f"{s['start']} .. {s['end']}, {s['gaps']} gaps) from {args.csv}: time column "
        f"{s['time_column']} ({s['time_format']}), phases in columns "
        f"{','.join(map(str, s['current_columns']))} -> {root}"
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from furnace.scorecard import service_settings
    from furnace.site_calibration import calibrate_site, format_summary

    bundle, _ = service_settings(args.bundle)
    record = calibrate_site(
        bundle,
        args.normal,
        args.out,
        target_per_10h=args.target_false_per_10h,
        holdout_fraction=args.holdout_fraction,
        current_columns=_columns(args.current_columns),
        time_column=args.time_column,
        rate_hz=args.rate_hz,
        signing_key=args.signing_key,
        progress=True,
    )
    print(format_summary(record))
    return 0


def _csv_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--current-columns",
        help="0-based columns of phases A,B,C (default: detected; e.g. 0,1,2)",
    )
    p.add_argument("--time-column", type=int, help="0-based timestamp column (default: detected)")
    p.add_argument(
        "--rate-hz", type=float, help="sampling rate (default: estimated from the timestamps)"
    )


def _signing_key_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--signing-key", default=os.environ.get("FURNACE_SIGNING_KEY") or None, help=help_text
    )


def _keygen(args: argparse.Namespace) -> int:
    from training.export.signing import generate_key_pair

    private, public = generate_key_pair(args.out, overwrite=args.force)
    print(f"private key {private} (keep it secret; furnace export/sign --signing-key)")
    print(f"public key  {public}: trust it with FURNACE_TRUSTED_KEYS_FILE={public}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from service.bundle import verify_bundle
    from service.signing import BundleTrust
    from training.export.signing import load_signing_key, public_key_text, sign_manifest

    if args.signing_key is None:
        print("furnace sign: give --signing-key (or FURNACE_SIGNING_KEY)", file=sys.stderr)
        return 2
    key = load_signing_key(args.signing_key)
    folder = Path(args.bundle)
    verify_bundle(folder)  # never sign a bundle whose files do not match its manifest
    path = sign_manifest(folder, key)
    manifest = verify_bundle(folder, trust=BundleTrust.from_texts([public_key_text(key)]))
    print(f"signed {folder} ({manifest.model_version}) with key {manifest.signed_by}: {path}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import math
    import os
    import signal
    import threading
    from dataclasses import replace

    import redis
    from tqdm import tqdm

    from simulator.replay import Replay
    from simulator.scenario import load_scenario, random_scenario

    if args.scenario is not None:
        if args.furnaces is not None or args.minutes is not None:
            print(
                "furnace replay: the scenario file sets furnaces and minutes; drop --furnaces "
                "and --minutes, or drop --scenario",
                file=sys.stderr,
            )
            return 2
        scenario = load_scenario(args.scenario)
        if args.seed is not None:
            scenario = replace(scenario, seed=args.seed)
    else:
        scenario = random_scenario(
            args.furnaces if args.furnaces is not None else 4,
            minutes=args.minutes if args.minutes is not None else 10.0,
            seed=args.seed if args.seed is not None else 0,
            camera_fps=args.camera_fps,
            faults=not args.no_faults,
        )
    url = args.redis_url or os.environ.get("FURNACE_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = args.prefix if args.prefix is not None else os.environ.get("FURNACE_KEY_PREFIX", "")
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    delay, started = 0.5, time.monotonic()
    while True:  # a refused connection (Redis still starting, restarting) is retried
        try:
            client.ping()
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            waited = time.monotonic() - started
            if args.wait_redis is not None and waited + delay > args.wait_redis:
                print(
                    f"furnace replay: cannot reach Redis at {url} ({exc}) after {waited:.0f} s; "
                    "start redis-server or set FURNACE_REDIS_URL",
                    file=sys.stderr,
                )
                return 2
            print(
                f"furnace replay: cannot reach Redis at {url} ({exc}); retrying in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
            try:
                time.sleep(delay)
            except KeyboardInterrupt:
                return 130
            delay = min(delay * 2, 10.0)
        except redis.RedisError as exc:  # e.g. authentication: retrying does not help
            print(f"furnace replay: Redis at {url} refused us ({exc})", file=sys.stderr)
            return 2
    # Faster than real time, sensor time would run ahead of the wall clock, and the service
    # dead-letters entries more than FURNACE_MAX_FUTURE_SKEW_SECONDS ahead: start in the past
    # so that the last entry is published when its sensor time is due.
    fast = args.speed == 0 or math.isinf(args.speed)
    lead = scenario.duration_s * (1.0 if fast else max(0.0, 1.0 - 1.0 / args.speed))
    t0 = time.time() - lead if lead > 0 else None
    replay = Replay(client, scenario, prefix=prefix, speed=args.speed, t0=t0, reconnect=True)
    speed = "max speed" if replay.fast else f"{args.speed:g}x real time"
    print(
        f"replaying {len(scenario.furnaces)} furnaces x {scenario.minutes:g} min into {url} "
        f"(prefix {prefix!r}) at {speed}; sensor time t0 = {replay.t0:.3f}"
    )
    schedule = replay.schedule()
    for w in schedule:
        print(
            f"  {w.furnace_id}: {w.condition} t0+{w.onset_ts - replay.t0:.0f} s to "
            f"t0+{w.end_ts - replay.t0:.0f} s"
        )
    if args.schedule:
        truth = {
            "t0": replay.t0,
            "prefix": prefix,
            "furnaces": replay.furnace_ids,
            "conditions": [w._asdict() for w in schedule],
            "faults": [w._asdict() for w in replay.fault_schedule()],
        }
        Path(args.schedule).write_text(json.dumps(truth, indent=2))
        print(f"ground truth: {args.schedule}")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop cleanly
    bar = tqdm(total=round(scenario.duration_s), unit="s", desc="sensor time", leave=True)

    def progress(t_sim: float, _entries: int) -> None:
        bar.update(max(t_sim - bar.n, 0.0))

    try:
        stats = replay.run(stop=stop, max_seconds=args.seconds, progress=progress)
        if stats.reason == "done":
            bar.update(bar.total - bar.n)  # the last entry is half a sample before the end
    except redis.RedisError as exc:
        print(f"furnace replay: Redis failed mid-run ({exc})", file=sys.stderr)
        return 1
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
    print(
        f"{stats.reason}: {stats.total('current')} current and {stats.total('camera')} camera "
        f"entries, {stats.sim_seconds:.0f} s of sensor time in {stats.wall_seconds:.1f} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="furnace",
        description="furnace-sentinel: abnormal-condition detection for fused magnesia furnaces",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="every library's log lines (debug level)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser(
        "simulate",
        help="simulate furnaces into the FMF-Benchmark layout and/or write the simulator report",
    )
    sim.add_argument("--out", help="dataset folder to write (FMF-Benchmark V2 layout)")
    sim.add_argument("--furnaces", type=int, default=4, help="number of furnaces (default 4)")
    sim.add_argument("--minutes", type=float, default=30.0, help="episode length (default 30)")
    sim.add_argument("--seed", type=int, default=0, help="master seed (test sets: another seed)")
    sim.add_argument("--camera-fps", type=float, default=2.0, help="camera rate (default 2)")
    sim.add_argument("--episodes-per-furnace", type=int, default=1)
    sim.add_argument(
        "--profile",
        choices=("default", "reference", "out_of_range"),
        default="default",
        help="domain randomisation profile (out_of_range: robustness tests only)",
    )
    sim.add_argument("--condition", choices=CONDITIONS, help="force the condition of events")
    sim.add_argument(
        "--event-free-fraction", type=float, default=0.4, help="share of episodes w/o events"
    )
    sim.add_argument("--test-fraction", type=float, default=0.2, help="test.json share")
    sim.add_argument("--no-faults", action="store_true", help="draw no sensor faults")
    sim.add_argument("--report", help="write the simulator report (report.html) to this folder")
    sim.set_defaults(func=_simulate)

    ds = sub.add_parser("dataset", help="inspect datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    info = ds_sub.add_parser("info", help="what a dataset holds (ours or an FMF-Benchmark one)")
    info.add_argument("dir", help="dataset root (the folder holding pixel-level/)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_dataset_info)

    train = sub.add_parser("train", help="pre-train CMG, train heads, calibrate (a run folder)")
    train.add_argument("--data", required=True, help="training dataset (FMF-Benchmark layout)")
    train.add_argument("--out", required=True, help="run folder, e.g. runs/default")
    train.add_argument(
        "--config", help="YAML config (keys: cmg, train); configs/default.yaml when omitted"
    )
    train.add_argument("--label-modality", choices=("current", "camera", "both"))
    train.add_argument("--steps", type=int, help="pre-training steps (overrides the config)")
    train.add_argument("--seed", type=int, help="training seed (overrides the config)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="evaluate a run on held-out furnaces")
    ev.add_argument("--run", required=True, help="run folder written by furnace train")
    ev.add_argument("--data", required=True, help="test dataset: furnaces never seen in training")
    ev.add_argument("--out", required=True, help="folder for metrics.json and report.html")
    ev.add_argument(
        "--ablation", action="append", help="WHAT=RUN_DIR: an ablation run to add to the table"
    )
    ev.add_argument("--no-baselines", action="store_true", help="skip the peer baselines")
    ev.set_defaults(func=_evaluate)

    sc = sub.add_parser(
        "scorecard",
        help="events alerted, named and missed, and false episodes: a dataset replayed through "
        "the service's windows, engine and alert policy (no Redis)",
    )
    sc.add_argument(
        "--bundle", default="default", help="bundle folder or a name under models/ (default)"
    )
    sc.add_argument("--data", required=True, help="simulated dataset (furnace simulate --out)")
    sc.add_argument("--out", required=True, help="folder for scorecard.json and scorecard.html")
    sc.add_argument(
        "--modalities",
        choices=("both", "current", "camera"),
        help="one setting only (default: all three: both, current only, camera only)",
    )
    sc.set_defaults(func=_scorecard)

    ex = sub.add_parser("export", help="export a run into a verified ONNX model bundle")
    ex.add_argument("--run", required=True, help="run folder written by furnace train")
    ex.add_argument("--out", required=True, help="bundle folder, e.g. models/default")
    ex.add_argument("--data", help="the run's training data (default: the path it recorded)")
    heads = ("current", "camera", "both")
    ex.add_argument(
        "--head",
        choices=heads,
        help="one head for both graphs (default: per modality, the best on validation among "
        "the heads trained with its labels; docs/export.md)",
    )
    ex.add_argument("--head-current", choices=heads, help="the current graph's head")
    ex.add_argument("--head-camera", choices=heads, help="the camera graph's head")
    ex.add_argument("--metrics", help="an evaluation's metrics.json to record in the manifest")
    ex.add_argument(
        "--no-alert-calibration",
        action="store_true",
        help="skip calibrating the alert policy on the validation furnaces (furnace "
        "calibrate-alerts does it later)",
    )
    ex.add_argument(
        "--target-false-per-10h",
        type=float,
        default=1.0,
        help="alert calibration: false episodes per 10 furnace-hours allowed in every sensor "
        "setting (default 1)",
    )
    _signing_key_option(
        ex,
        "Ed25519 private key (PEM, furnace keygen) to sign the bundle with "
        "(default: $FURNACE_SIGNING_KEY; none: unsigned)",
    )
    ex.set_defaults(func=_export)

    ca = sub.add_parser(
        "calibrate-alerts",
        help="choose a bundle's alert policy (k of n and thresholds) on validation furnaces "
        "for a target false-episode rate per furnace-hour; writes it into the manifest",
    )
    ca.add_argument("--bundle", required=True, help="bundle folder")
    ca.add_argument(
        "--data",
        action="append",
        help="simulated data with the furnaces (default: the manifest's training data); "
        "repeat it to pool several datasets' furnace-hours",
    )
    ca.add_argument(
        "--furnaces",
        action="append",
        help="which furnaces of --data: 'val' (the manifest's validation furnaces; the "
        "default), 'all' (every recording of that dataset) or comma-separated furnace ids; "
        "one for every --data, or one per --data in the same order",
    )
    ca.add_argument(
        "--target-false-per-10h",
        type=float,
        default=1.0,
        help="false episodes per 10 furnace-hours allowed in every sensor setting (default 1)",
    )
    ca.add_argument("--out", help="write a calibrated copy here (default: change the bundle)")
    ca.add_argument(
        "--no-adaptation",
        action="store_true",
        help="leave per-furnace score adaptation off (default: on, its reference taken from "
        "the calibration furnaces; docs/service.md 'Per-furnace adaptation')",
    )
    _signing_key_option(
        ca,
        "key that re-signs the rewritten manifest (default: $FURNACE_SIGNING_KEY); "
        "required when the bundle is signed",
    )
    ca.set_defaults(func=_calibrate_alerts)

    me = sub.add_parser(
        "memory",
        help="add memory heads (the last minutes of a furnace's shared codes) to a bundle, "
        "trained on the codes of its own graphs (role name: they name the condition)",
    )
    me.add_argument("--bundle", required=True, help="bundle folder (changed in place)")
    me.add_argument("--data", required=True, help="the run's training data (simulated)")
    me.add_argument("--out", help="write the bundle with memory here instead")
    me.add_argument("--slots", type=int, default=16, help="windows of history read (16)")
    me.add_argument("--stride", type=int, default=8, help="hops between them (8 = 16 s)")
    me.add_argument("--epochs", type=int, default=10, help="training epochs per head (10)")
    me.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible)")
    me.add_argument(
        "--role",
        choices=("name", "decide"),
        default="name",
        help="name (default): the memory heads' probabilities name the condition, the window "
        "heads' scores still decide (thresholds and alert policy kept); decide: their scores "
        "and probabilities replace the window heads' (thresholds and alert policy "
        "recalibrated; docs/results.md)",
    )
    me.add_argument(
        "--no-alert-calibration",
        action="store_true",
        help="role decide: leave the alert policy out (furnace calibrate-alerts does it later)",
    )
    _signing_key_option(
        me,
        "key that signs the rewritten bundle (default: $FURNACE_SIGNING_KEY); required when "
        "the bundle is signed",
    )
    me.set_defaults(func=_memory)

    im = sub.add_parser(
        "import",
        help="read a plant historian CSV export of the current into the FMF-Benchmark layout",
    )
    im.add_argument(
        "--csv",
        required=True,
        help="the export: a timestamp column (ISO 8601, M/D/YYYY HH:MM:SS or Unix seconds) "
        "and three phase-current columns in A, with or without a header",
    )
    im.add_argument("--out", required=True, help="dataset folder to write (or add to)")
    im.add_argument("--name", help="recording name (default: the file name)")
    _csv_options(im)
    im.set_defaults(func=_import)

    cb = sub.add_parser(
        "calibrate",
        help="calibrate a bundle on a site's unlabelled normal operation into a new bundle",
    )
    cb.add_argument("--bundle", required=True, help="bundle name under models/ or a folder")
    cb.add_argument(
        "--normal",
        action="append",
        required=True,
        help="normal operation: a plant CSV export or an FMF-layout dataset folder; repeat it "
        "for several",
    )
    cb.add_argument("--out", required=True, help="the new bundle folder (new or empty)")
    cb.add_argument(
        "--target-false-per-10h",
        type=float,
        default=1.0,
        help="false episodes per 10 furnace-hours allowed on the normal data (default 1)",
    )
    cb.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        help="keep the last share of each recording out of the calibration and report the "
        "false episodes on it (default 0: calibrate on everything)",
    )
    _csv_options(cb)
    _signing_key_option(
        cb, "key that signs the new bundle (default: $FURNACE_SIGNING_KEY; none: unsigned)"
    )
    cb.set_defaults(func=_calibrate)

    kg = sub.add_parser("keygen", help="make an Ed25519 key pair for signing model bundles")
    kg.add_argument("--out", required=True, help="path prefix: writes PREFIX.key and PREFIX.pub")
    kg.add_argument("--force", action="store_true", help="overwrite existing files")
    kg.set_defaults(func=_keygen)

    sg = sub.add_parser("sign", help="sign an existing, verified bundle (signature.json)")
    sg.add_argument("--bundle", required=True, help="bundle folder")
    _signing_key_option(sg, "Ed25519 private key, PEM (default: $FURNACE_SIGNING_KEY)")
    sg.set_defaults(func=_sign)

    rp = sub.add_parser("replay", help="publish simulated furnaces into Redis streams (live)")
    rp.add_argument("--redis-url", help="default: $FURNACE_REDIS_URL or redis://127.0.0.1:6379/0")
    rp.add_argument("--prefix", help='key prefix (default: $FURNACE_KEY_PREFIX or "")')
    rp.add_argument("--scenario", help="TOML scenario (see examples/scenario.toml)")
    rp.add_argument("--furnaces", type=int, help="random furnaces, without --scenario (4)")
    rp.add_argument("--minutes", type=float, help="episode length, without --scenario (10)")
    rp.add_argument("--seed", type=int, help="master seed (default 0, or the scenario's)")
    rp.add_argument("--camera-fps", type=float, default=2.0, help="random furnaces (default 2)")
    rp.add_argument("--no-faults", action="store_true", help="random furnaces: no sensor faults")
    rp.add_argument(
        "--speed", type=float, default=1.0, help="x real time (default 1; 0: as fast as possible)"
    )
    rp.add_argument("--seconds", type=float, help="stop after this many wall-clock seconds")
    rp.add_argument("--schedule", help="write the ground truth (sensor-time JSON) to this file")
    rp.add_argument(
        "--wait-redis",
        type=float,
        help="give up when Redis refuses connections this many seconds at start (default: "
        "retry until Ctrl-C; a connection lost mid-run is always retried)",
    )
    rp.set_defaults(func=_replay)

    serve = sub.add_parser(
        "serve", help="run the detection service (settings: FURNACE_* environment variables)"
    )
    serve.add_argument("--host", help="bind address (default FURNACE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default FURNACE_PORT or 8000)")
    serve.set_defaults(func=_serve)

    demo = sub.add_parser(
        "demo", help="simulated furnaces -> Redis -> detection service -> live detections"
    )
    demo.add_argument("--seconds", type=float, help="stop after this long (default: scenario end)")
    demo.add_argument("--speed", type=float, default=8.0, help="x real time (default 8)")
    demo.add_argument("--scenario", help="scenario TOML (default examples/scenario.toml)")
    demo.set_defaults(func=_demo)
    for command in sub.choices.values():  # `furnace export --verbose` = `furnace -v export`
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,  # keeps the top-level flag when not given here
            help="every library's log lines (debug level)",
        )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("furnace-sentinel")
    except PackageNotFoundError:
        return "unknown (not installed)"


PROJECT_LOGGERS = ("furnace", "service", "simulator", "training", "model")


def configure_logging(verbose: bool) -> None:
    """Quiet by default: this project's INFO lines and every library's warnings (the ONNX
    exporter alone logs over a hundred INFO lines per export); `--verbose`: everything, at
    debug level."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"furnace {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
