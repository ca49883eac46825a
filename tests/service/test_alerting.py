"""Alert state machine: hysteresis, idempotent replays, condition voting, serialisation."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from service.alerting import (
    CONDITION_UNKNOWN,
    AlertEvent,
    AlertPolicy,
    AlertState,
    episode_id,
    next_state,
)
from service.detection import Detection

T0 = 1_700_000_000.0
LABELS = {"both": ("current", "camera"), "none": ()}  # decided_by labels -> modality names


def _det(i: int, abnormal: bool, *, condition: str = "eruption", **kw: Any) -> Detection:
    """Window i of furnace f1. `score=None`: no modality could decide it; `modalities`: a
    decided_by label ("both", "current", "camera") or modality names."""
    score = kw.pop("score", 0.9 if abnormal else 0.1)
    m = kw.pop("modalities", "both")
    names = LABELS.get(m, (m,)) if isinstance(m, str) else tuple(m)
    if score is None:
        names, score = (), math.nan
    return Detection(
        furnace_id="f1",
        window_end=T0 + 2.0 * i,
        condition=condition,
        probabilities={},
        score=score,
        threshold=0.5,
        is_abnormal=abnormal,
        modalities=names,
        health={},
    )


def _run(
    flags: list[bool | None], policy: AlertPolicy | None = None, **kw: object
) -> tuple[AlertState, list[AlertEvent]]:
    """Feed windows 0, 1, ...: True abnormal, False clean, None unscored (no usable modality)."""
    state, events = AlertState("f1"), []
    for i, flag in enumerate(flags):
        det = _det(i, bool(flag), score=None) if flag is None else _det(i, flag, **kw)
        state, new = next_state(state, det, policy)
        events += new
    return state, events


def test_opens_on_k_of_n_and_closes_after_m_clean() -> None:
    state, events = _run([True, False, True, True])
    assert [e.kind for e in events] == ["opened"]
    ep = events[0].episode
    assert ep.opened_at == T0 + 6.0 and ep.id == f"f1-{round((T0 + 6.0) * 1000)}"
    assert ep.raised_by == "both" and ep.condition == "eruption" and ep.closed_at is None
    assert state.episode == ep
    state, events = _run([True, False, True, True, False, True, False, False, False])
    assert [e.kind for e in events] == ["opened", "closed"]
    closed = events[-1].episode
    assert closed.closed_at == T0 + 16.0 and closed.id == events[0].episode.id
    assert state.episode is None and state.last_episode == closed


@pytest.mark.parametrize(
    "flags",
    [
        [True, True, False, False, True, True],  # never 3 of the last 4
        [True, False, True, False, True, False, True],
        [True, True, False, False, False, True],
    ],
)
def test_does_not_open_below_k_of_n(flags: list[bool]) -> None:
    state, events = _run(flags)
    assert events == [] and state.episode is None


def test_hysteresis_keeps_an_open_episode_through_short_clean_runs() -> None:
    flags = [True, True, True] + [False, False, True] * 5 + [False, False, False]
    state, events = _run(flags)
    assert [e.kind for e in events] == ["opened", "closed"]
    assert events[1].window_end == T0 + 2.0 * (len(flags) - 1)


@pytest.mark.fault(
    "windows no modality could score (sensor faults) during and around an episode",
    expected="they neither open nor close an episode",
)
def test_unscored_windows_neither_open_nor_close() -> None:
    state, events = _run([True, True, True, None, None, None, None, False, False])
    assert [e.kind for e in events] == ["opened"] and state.episode is not None
    assert state.last_window_end == T0 + 16.0
    state, events = _run([True, None, True, None, True])
    assert [e.kind for e in events] == ["opened"]


@pytest.mark.fault(
    "redelivered windows; the state rebuilt from the detections stream",
    expected="nothing changes; the same episodes",
)
def test_replays_are_idempotent() -> None:
    rng = np.random.default_rng(0)
    dets = [_det(i, bool(f)) for i, f in enumerate(rng.uniform(size=60) < 0.5)]
    state, events = AlertState("f1"), []
    for d in dets:
        state, new = next_state(state, d)
        events += new
    for d in dets[-10:] + dets[:5]:  # redelivered windows: nothing changes
        again, new = next_state(state, d)
        assert again is state and new == []
    replayed, replay_events = AlertState("f1"), []
    for d in dets:  # rebuilding from the detections stream gives the same episodes
        replayed, new = next_state(AlertState.from_dict(replayed.to_dict()), d)
        replay_events += new
    assert replayed == state and replay_events == events


def test_condition_vote_and_updates() -> None:
    conds = ["overheating", "overheating", "eruption", "eruption", "eruption", "normal"]
    state, events = AlertState("f1"), []
    for i, c in enumerate(conds):
        state, new = next_state(state, _det(i, True, condition=c, score=0.5 + i / 10))
        events += new
    assert [e.kind for e in events] == ["opened", "updated"]
    assert events[0].episode.condition == "overheating"  # 2 vs 1 when it opened
    assert events[1].episode.condition == "eruption" and events[1].window_end == T0 + 8.0
    assert state.episode is not None and dict(state.episode.votes) == {
        "overheating": 2,
        "eruption": 3,
    }
    assert state.episode.peak_score == pytest.approx(1.0)


def test_tie_keeps_the_current_leader_and_normal_votes_are_ignored() -> None:
    conds = ["semi_molten", "overheating", "normal", "overheating", "semi_molten"]
    state, events = AlertState("f1"), []
    for i, c in enumerate(conds):
        state, new = next_state(state, _det(i, True, condition=c))
        events += new
    assert [e.kind for e in events] == ["opened", "updated"]
    assert events[0].episode.condition == "semi_molten"  # 1 vs 1 at opening: the first seen
    assert events[1].episode.condition == "overheating"  # 2 vs 1
    assert state.episode is not None and state.episode.condition == "overheating"  # 2 vs 2
    _, events = _run([True, True, True], condition="normal")
    assert events[0].episode.condition == CONDITION_UNKNOWN


@pytest.mark.parametrize(
    ("modalities", "raised_by"),
    [
        (["current", "current", "current"], "current"),
        (["camera", "camera", "camera"], "camera"),
        (["current", "camera", "current"], "both"),
        (["both", "current", "current"], "both"),
    ],
)
def test_raised_by_is_the_union_of_the_opening_windows(
    modalities: list[str], raised_by: str
) -> None:
    state = AlertState("f1")
    for i, m in enumerate(modalities):
        state, events = next_state(state, _det(i, True, modalities=m))
    assert events[0].kind == "opened" and events[0].episode.raised_by == raised_by


def test_policy_parameters_and_gap_reset() -> None:
    policy = AlertPolicy(k=2, n=2, m=1)
    _, events = _run([True, True, False], policy)
    assert [e.kind for e in events] == ["opened", "closed"]
    gap = AlertPolicy(max_gap_seconds=10.0)
    state = AlertState("f1")
    for i in (0, 1, 20):  # the third window comes 38 s later: history is forgotten
        state, events = next_state(state, _det(i, True), gap)
    assert events == [] and len(state.recent) == 1
    with pytest.raises(ValueError, match="k <= n"):
        AlertPolicy(k=5, n=4)


def test_serialisation_round_trip_with_str_and_bytes() -> None:
    state, _ = _run([True, True, True, False, True, False, False, False, True, True])
    assert state.last_episode is not None and state.episode is None
    d = state.to_dict()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())
    assert AlertState.from_dict(d) == state
    assert AlertState.from_dict({k.encode(): v.encode() for k, v in d.items()}) == state
    state, _ = _run([True, True, True, True])
    assert AlertState.from_dict(state.to_dict()) == state
    assert AlertState.from_dict(AlertState("f1").to_dict()) == AlertState("f1")
    assert next_state(AlertState("f1"), _det(0, True))[1] == []
    ev = _run([True, True, True])[1][0].to_dict()
    assert ev["event"] == "opened" and float(ev["window_end"]) == T0 + 4.0
    assert ev["closed_at"] == "" and json.dumps(ev)


@pytest.mark.parametrize(
    "broken",
    [{}, {"version": "0"}, {"version": "1", "furnace_id": "f1"}],
)
@pytest.mark.fault(
    "a broken alert state hash (empty, wrong version, missing fields, bad JSON)",
    expected="ValueError naming the alert state",
)
def test_from_dict_rejects_broken_state(broken: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="alert state"):
        AlertState.from_dict(broken)
    good = AlertState("f1").to_dict()
    with pytest.raises(ValueError, match="invalid alert state"):
        AlertState.from_dict({**good, "recent": "[{]"})


@pytest.mark.fault(
    "detections of another furnace, with a NaN score or unknown modalities",
    expected="ValueError, never applied",
)
def test_rejects_bad_detections() -> None:
    state = AlertState("f1")
    with pytest.raises(ValueError, match="applied to"):
        next_state(state, replace(_det(0, True), furnace_id="f2"))
    with pytest.raises(ValueError, match="finite"):
        next_state(state, _det(0, True, score=float("nan")))
    with pytest.raises(ValueError, match="modalities"):
        next_state(state, _det(0, True, modalities="infrared"))
    with pytest.raises(ValueError, match="modalities"):
        next_state(state, _det(0, True, modalities=("current", "sound")))
    assert episode_id("f1", 1.5) == "f1-1500"


def test_accepts_modality_tuples_like_the_engine_detection() -> None:
    state = AlertState.initial("f1")
    for i, m in enumerate([("current",), ("camera", "current"), ("current",)]):
        state, events = next_state(state, _det(i, True, modalities=m))
    assert events[0].episode.raised_by == "both" and events[0].condition == "eruption"
    assert events[0].furnace_id == "f1" and state.episode_dict() == events[0].episode.to_dict()
    again, events = next_state(state, _det(3, False, modalities=()))  # nothing usable
    assert events == [] and again.clean_streak == state.clean_streak
    assert AlertState("f1").episode_dict() is None
