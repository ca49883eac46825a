"""End to end (issue 5): a scripted plant (`simulator.replay`) -> Redis Streams -> the service
-> detections and alert episodes, checked against the replay's ground truth.

What the test asserts is what the service guarantees whatever the model: one detection per
window end, decisions that follow the bundle's thresholds, and alert episodes that follow the
k-of-n / m-clean hysteresis exactly (the bundle's calibrated alert policy, which the service
runs when no FURNACE_ALERT_* overrides it; 3 of 4 for a bundle without one) -- replaying the
detections stream through `alerting.next_state` reproduces the `alerts` stream event for event
(docs/design/serving.md 1.5, 2.3).

How well the model detects the scheduled conditions depends on the bundle: the test measures
it (alert delay per scheduled condition, episodes opened outside any condition) and prints a
summary (`pytest -s`; docs/service.md quotes it). For the shipped default bundle it also gates
on the issue's goal: every scheduled condition but abnormal exhaust (`UNGATED`) alerted within
its expected delay (`EXPECTED_DELAY_S`, from the onset dynamics of docs/design/furnace.md 4.2)
and no alert episode in a normal stretch. The replay and ONNX Runtime on the CPU are
deterministic, so a failure means a worse bundle, not chance.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.alerting import AlertPolicy, AlertState, next_state, resolve_policy
from service.bundle import Manifest
from service.main import create_app
from service.store import read_detection
from service.types import WindowSpec
from simulator.replay import ConditionWindow, Replay
from simulator.scenario import ConditionSpec, FurnaceSpec, Scenario
from tests.helpers.decisions import check_decision
from tests.helpers.redis_keys import delete_prefix
from tests.helpers.service import REPO, T0, hop_grid, make_settings, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MINUTES = 10.0
# Three furnaces: every condition of the API once, and one furnace that stays normal.
SCENARIO = (
    FurnaceSpec(
        "e1",
        (
            ConditionSpec("semi_molten", 150.0, 120.0),
            ConditionSpec("abnormal_exhaust", 330.0, 90.0),
        ),
        (),
    ),
    FurnaceSpec(
        "e2",
        (
            ConditionSpec("overheating", 150.0, 150.0),
            ConditionSpec("eruption", 230.0, 30.0),
            ConditionSpec("electrode_breakage", 400.0, 60.0, cut_s=60.0, ramp_s=20.0),
        ),
        (),
    ),
    FurnaceSpec("e3", (), ()),
)
NORMAL_FURNACE = "e3"


@dataclass(frozen=True)
class Run:
    prefix: str
    replay: Replay
    detections: dict[str, list[tuple[str, dict[bytes, bytes]]]]  # furnace -> XRANGE rows
    alerts: list[dict[str, str]]  # the alerts stream, oldest first


def _text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


@pytest.fixture(scope="module")
def policy(manifest: Manifest) -> AlertPolicy:
    """What the service runs for this bundle with no FURNACE_ALERT_*: its calibrated policy.
    Until 2026-12-05 (fifth session) the test fixed 3 of 4 for every bundle; the shipped
    bundle's thresholds are calibrated with its own k of n, and the gate checks what ships."""
    return resolve_policy(manifest.alert_policy)


@pytest.fixture(scope="module")
def run(redis_url: str, bundle_dir: Path, manifest: Manifest, policy: AlertPolicy) -> Iterator[Run]:
    spec = manifest.window
    prefix = f"t:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(redis_url)
    scenario = Scenario(SCENARIO, seed=11, minutes=MINUTES)
    replay = Replay(client, scenario, prefix=prefix, speed=0, t0=T0)
    replay.run()
    settings = make_settings(
        redis_url, prefix, bundle_dir, alert_k=policy.k, alert_n=policy.n, alert_m=policy.m
    )
    last = math.floor((T0 + MINUTES * 60.0 - 0.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    try:
        with TestClient(create_app(settings, group_start_id="0")):
            for furnace in replay.furnace_ids:

                def done(furnace: str = furnace) -> bool:
                    rows = client.xrevrange(f"{prefix}furnace:{furnace}:detections", count=1)
                    return bool(rows) and float(rows[0][1][b"window_end"]) >= last - 1e-6

                wait_for(f"the last window of {furnace}", done, 240, every=0.2)
        detections = {
            f: client.xrange(f"{prefix}furnace:{f}:detections") for f in replay.furnace_ids
        }
        alerts = [_text(fields) for _, fields in client.xrange(f"{prefix}alerts")]
        yield Run(prefix, replay, detections, alerts)  # type: ignore[arg-type]
    finally:
        client.close()
        delete_prefix(redis_url, prefix)


def test_every_window_end_is_detected_once(run: Run, spec: WindowSpec) -> None:
    first = math.ceil((T0 + spec.window_seconds - 0.5) / spec.hop_seconds) * spec.hop_seconds
    last = math.floor((T0 + MINUTES * 60.0 - 0.5 - 1.0) / spec.hop_seconds) * spec.hop_seconds
    for furnace, rows in run.detections.items():
        ends = [float(fields[b"window_end"]) for _, fields in rows]
        assert ends == hop_grid(spec, first, last), furnace


def test_decisions_follow_the_bundle_thresholds(run: Run, manifest: Manifest) -> None:
    for rows in run.detections.values():
        for _, fields in rows:
            d = json.loads(fields[b"data"])
            if d["decided_by"] == "none":
                assert d["score"] is None and not d["is_abnormal"]
                continue
            check_decision(d, manifest.thresholds)


def test_replaying_the_detections_reproduces_the_alerts_stream(
    run: Run, policy: AlertPolicy
) -> None:
    replayed: list[dict[str, str]] = []
    for furnace, rows in run.detections.items():
        state = AlertState.initial(furnace)
        for _, fields in rows:
            state, events = next_state(state, read_detection(fields), policy)
            replayed.extend(ev.to_dict() for ev in events)
    # The service writes one furnace's events in window order; furnaces interleave.
    for furnace in run.replay.furnace_ids:
        mine = [a for a in run.alerts if a["furnace_id"] == furnace]
        assert mine == [a for a in replayed if a["furnace_id"] == furnace], furnace
    assert len(run.alerts) == len(replayed)


def test_episodes_open_on_k_of_n_and_close_after_m_clean(run: Run, policy: AlertPolicy) -> None:
    """The hysteresis, checked from the detections stream alone (not through next_state)."""
    for furnace, rows in run.detections.items():
        scored = [
            (float(d["window_end"]), bool(d["is_abnormal"]))
            for d in (json.loads(fields[b"data"]) for _, fields in rows)
            if d["decided_by"] != "none"
        ]
        events = [a for a in run.alerts if a["furnace_id"] == furnace]
        expected: list[tuple[str, float]] = []
        open_, recent, clean = False, [], 0
        for end, abnormal in scored:
            recent = [*recent, abnormal][-policy.n :]
            clean = 0 if abnormal else clean + 1
            if not open_ and abnormal and sum(recent) >= policy.k:
                expected.append(("opened", end))
                open_ = True
            elif open_ and clean >= policy.m:
                expected.append(("closed", end))
                open_, recent = False, []
        got = [(a["event"], float(a["window_end"])) for a in events if a["event"] != "updated"]
        assert got == expected, furnace


def _summary(run: Run, spec: WindowSpec, policy: AlertPolicy) -> dict[str, Any]:
    """Alert delay per scheduled condition and episodes opened outside every condition."""
    schedule: list[ConditionWindow] = run.replay.schedule()
    opened = [a for a in run.alerts if a["event"] == "opened"]
    slack = spec.window_seconds + policy.n * spec.hop_seconds  # windows still holding it
    per_condition = []
    for cw in schedule:
        hits = [
            a
            for a in opened
            if a["furnace_id"] == cw.furnace_id
            and cw.onset_ts <= float(a["window_end"]) <= cw.end_ts + slack
        ]
        first = min((float(a["window_end"]) for a in hits), default=None)
        inside = [
            d
            for d in _scored(run, cw.furnace_id)
            if cw.label_start_ts <= d["window_end"] <= cw.label_end_ts
        ]
        per_condition.append(
            {
                "furnace": cw.furnace_id,
                "condition": cw.condition,
                "labelled_s": [round(cw.label_start_ts - T0, 1), round(cw.label_end_ts - T0, 1)],
                "alert_delay_s": None if first is None else round(first - cw.label_start_ts, 1),
                "episode_conditions": sorted({a["condition"] for a in hits}),
                "windows_flagged": f"{sum(d['is_abnormal'] for d in inside)}/{len(inside)}",
            }
        )
    false_alerts = [
        {"furnace": a["furnace_id"], "at_s": float(a["window_end"]) - T0, "as": a["condition"]}
        for a in opened
        if not any(
            cw.furnace_id == a["furnace_id"]
            and cw.onset_ts <= float(a["window_end"]) <= cw.end_ts + slack
            for cw in schedule
        )
    ]
    quiet = {
        f: [
            d
            for d in _scored(run, f)
            if not any(
                cw.furnace_id == f
                and d["window_end"] - spec.window_seconds < cw.end_ts + slack
                and d["window_end"] > cw.onset_ts
                for cw in schedule
            )
        ]
        for f in run.replay.furnace_ids
    }
    return {
        "conditions": per_condition,
        "normal_windows_flagged": {
            f: f"{sum(d['is_abnormal'] for d in ds)}/{len(ds)}" for f, ds in quiet.items()
        },
        "false_alerts": false_alerts,
        "false_alerts_per_furnace": {
            f: sum(1 for a in false_alerts if a["furnace"] == f) for f in run.replay.furnace_ids
        },
        "normal_furnace": NORMAL_FURNACE,
        "minutes_per_furnace": MINUTES,
    }


def _scored(run: Run, furnace: str) -> list[dict[str, Any]]:
    """The furnace's detections that decided something (a usable modality)."""
    rows = (json.loads(fields[b"data"]) for _, fields in run.detections[furnace])
    return [d for d in rows if d["decided_by"] != "none"]


def test_measured_alert_delays_and_false_alerts(
    run: Run, spec: WindowSpec, manifest: Manifest, policy: AlertPolicy, record_property: Any
) -> None:
    summary = _summary(run, spec, policy)
    summary["model_version"] = manifest.model_version
    summary["alert_policy"] = {"k": policy.k, "n": policy.n, "m": policy.m}
    record_property("e2e_summary", json.dumps(summary))
    print("\ne2e summary:", json.dumps(summary, indent=1))  # noqa: T201 (pytest -s)
    # Sanity only: every scheduled condition is accounted for, each exactly once.
    assert [c["condition"] for c in summary["conditions"]] == [
        c.condition for f in SCENARIO for c in sorted(f.conditions or (), key=lambda c: c.start_s)
    ]
    for c in summary["conditions"]:
        assert c["alert_delay_s"] is None or c["alert_delay_s"] >= -slack_s(spec)


# Expected alert delay after the labels start, per condition: abrupt ones within two window
# hops of a 16-s window, bursty ones within two minutes, slow build-ups within five.
EXPECTED_DELAY_S = {
    "eruption": 30.0,
    "electrode_breakage": 30.0,
    "abnormal_exhaust": 120.0,
    "overheating": 300.0,
    "semi_molten": 300.0,
}


# Measured (the summary prints its delay) but not gated: the held-out scorecards alert 2 to 3
# of 10 visible abnormal exhaust events with the alert policy calibrated on 16 or on 40
# furnace-hours alike (docs/results.md, "Calibrating on 40 furnace-hours"), so whether this
# one scripted exhaust is caught is a draw, not a property of the bundle.
UNGATED = frozenset({"abnormal_exhaust"})


def test_the_shipped_bundle_alerts_every_condition_in_time_and_nothing_else(
    run: Run, spec: WindowSpec, manifest: Manifest, policy: AlertPolicy
) -> None:
    shipped = json.loads((REPO / "models" / "default" / "manifest.json").read_text())
    if manifest.model_version != shipped["model_version"]:  # bundle_dir is a verified copy
        pytest.skip("the quality gate applies to the shipped default bundle only")
    summary = _summary(run, spec, policy)
    late = [
        (c["furnace"], c["condition"], c["alert_delay_s"])
        for c in summary["conditions"]
        if c["condition"] not in UNGATED
        and (c["alert_delay_s"] is None or c["alert_delay_s"] > EXPECTED_DELAY_S[c["condition"]])
    ]
    assert late == [], f"missed or late: {late}"
    assert summary["false_alerts"] == []


def slack_s(spec: WindowSpec) -> float:
    """An episode can open before the labels start: the build-up precedes them."""
    return spec.window_seconds + 60.0
