"""Replay scenarios: which furnaces run, which conditions and sensor faults happen, and when.

A scenario is a TOML file (stdlib `tomllib`; format in docs/simulator.md, "Live replay into
Redis", example in examples/scenario.toml) or built in code. Every field is validated with a
message that says what to fix. Conditions reuse `events.ConditionEvent`, faults reuse
`types.FaultEvent`, and episodes come from `episode.simulate_episode`, so a scenario furnace is
an ordinary simulator episode whose condition and fault draws are replaced.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulator.config import CONDITIONS, FAULT_MODALITY, MODALITIES, SimConfig
from simulator.dataset import furnace_id
from simulator.episode import episode_seeds, random_furnace_params, simulate_episode
from simulator.events import ConditionEvent, _draw_condition
from simulator.types import Episode, FaultEvent

FURNACE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # docs/design/serving.md 1.1
# docs/design/furnace.md 7.8: every episode opens with >= 2 min of normal (baselines)
LEAD_IN_S = 120.0
FAULT_KINDS: tuple[str, ...] = (*FAULT_MODALITY, "skew")
_CONDITION_SPAWN = 1 << 20  # spawn-key slot of the scenario's own condition-parameter draws
_KEYS = {
    "scenario": ("seed", "minutes", "camera_fps", "furnace"),
    "furnace": ("id", "conditions", "faults", "camera_down_at", "current_down_at"),
    "condition": ("condition", "start_s", "duration_s", "severity", "buildup_s", "recovery_s")
    + ("cut_s", "ramp_s"),
    "fault": ("modality", "kind", "start_s", "duration_s", "phase", "value", "seed"),
}


@dataclass(frozen=True)
class ConditionSpec:
    """One scheduled condition: severity rises at `start_s` and is back to 0 at `end_s`."""

    condition: str  # one of config.CONDITIONS
    start_s: float  # onset, seconds since the episode start
    duration_s: float  # onset to end of recovery
    severity: float = 1.0  # evidence multiplier in both modalities (SimConfig.evidence_gain)
    buildup_s: float | None = None  # None: the simulator's draw, shortened to fit
    recovery_s: float | None = None
    cut_s: float = 120.0  # electrode_breakage: operator power cut after the event (normal)
    ramp_s: float = 30.0  # electrode_breakage: ramp back after the cut

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def busy_until_s(self) -> float:
        """End of the event including a breakage's power cut and ramp (no event may start)."""
        tail = self.cut_s + self.ramp_s if self.condition == "electrode_breakage" else 0.0
        return self.end_s + tail


@dataclass(frozen=True)
class FurnaceSpec:
    """One furnace of a scenario. `None` conditions or faults: the simulator draws them."""

    furnace_id: str
    conditions: tuple[ConditionSpec, ...] | None = ()  # (): a normal furnace
    faults: tuple[FaultEvent, ...] | None = ()


@dataclass(frozen=True)
class Scenario:
    """Furnaces, their schedules, and the episode length and camera rate they share."""

    furnaces: tuple[FurnaceSpec, ...]
    seed: int = 0
    minutes: float = 10.0
    camera_fps: float = 2.0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    def config_for(self, furnace: FurnaceSpec) -> SimConfig:
        """The SimConfig of one furnace: severities become per-condition evidence gains."""
        gains = {c.condition: c.severity for c in furnace.conditions or ()}
        return SimConfig(
            minutes=self.minutes,
            camera_fps=self.camera_fps,
            lead_in_s=LEAD_IN_S,
            faults=furnace.faults is None,
            evidence_gain=tuple((c, m, g) for c, g in gains.items() for m in MODALITIES),
        )


def stream_down(modality: str, at_s: float, until_s: float) -> FaultEvent:
    """A fault that stops a modality's stream from `at_s` on (camera: disconnected)."""
    kind = "disconnected" if modality == "camera" else "missing"
    return FaultEvent(kind, modality, float(at_s), float(until_s))


def random_scenario(
    furnaces: int,
    *,
    minutes: float = 10.0,
    seed: int = 0,
    camera_fps: float = 2.0,
    faults: bool = True,
) -> Scenario:
    """N furnaces whose conditions (and faults, unless `faults=False`) the simulator draws.

    Furnace ids are `dataset.furnace_id(seed, i)`, so furnace i has the parameters it has in
    a dataset run with the same seed.
    """
    specs = tuple(
        FurnaceSpec(furnace_id(seed, i), None, None if faults else ()) for i in range(furnaces)
    )
    return Scenario(specs, seed=seed, minutes=minutes, camera_fps=camera_fps)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a TOML scenario file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not TOML, or a field is missing, unknown or out of range (the message
            names the field and says what to fix).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path} is not valid TOML: {exc}"
        raise ValueError(msg) from exc
    return parse_scenario(data, source=str(path))


def parse_scenario(data: Mapping[str, Any], *, source: str = "scenario") -> Scenario:
    """Build a Scenario from parsed TOML (or any mapping of the same shape)."""
    _known(data, "scenario", source)
    seed = _int(data.get("seed", 0), f"{source}: seed")
    minutes = _number(data.get("minutes", 10.0), f"{source}: minutes")
    camera_fps = _number(data.get("camera_fps", 2.0), f"{source}: camera_fps")
    tables = data.get("furnace")
    if not isinstance(tables, list) or not tables:
        msg = f'{source}: add at least one [[furnace]] table with an id, e.g. id = "f001"'
        raise ValueError(msg)
    furnaces = []
    for i, table in enumerate(tables):
        where = f"{source}: furnace[{i}]"
        if not isinstance(table, Mapping):
            msg = f"{where} must be a table ([[furnace]])"
            raise ValueError(msg)
        _known(table, "furnace", where, required=("id",))
        fid = _str(table["id"], f"{where}.id")
        where = f"{source}: furnace {fid!r}"
        conditions = _conditions(table.get("conditions", []), where)
        end_s = minutes * 60.0
        faults = _faults(table.get("faults", []), where, seed=seed, index=i, end_s=end_s)
        for modality in MODALITIES:
            if f"{modality}_down_at" in table:
                at = f"{where}.{modality}_down_at"
                at_s = _number(table[f"{modality}_down_at"], at)
                if not 0.0 <= at_s < end_s:
                    msg = f"{at}={at_s:g} must be in [0, {end_s:g}) s (the episode)"
                    raise ValueError(msg)
                faults = (*(faults or ()), stream_down(modality, at_s, end_s))
        furnaces.append(FurnaceSpec(fid, conditions, faults))
    return Scenario(tuple(furnaces), seed=seed, minutes=minutes, camera_fps=camera_fps)


def build_events(
    conditions: Sequence[ConditionSpec], rng: np.random.Generator
) -> list[ConditionEvent]:
    """ConditionEvents at the scheduled times, with the simulator's drawn parameters.

    The build-up and recovery are the simulator's draw (shortened to fit `duration_s`) unless
    given; the hold fills the rest. An overheating never escalates by itself here: schedule
    the eruption explicitly.
    """
    events = []
    for spec in sorted(conditions, key=lambda c: c.start_s):
        drawn = _draw_condition(spec.condition, spec.start_s, rng, spec.duration_s)[0]
        params = dict(drawn.params)
        if spec.condition == "overheating":
            params["escalates"] = False
        if spec.condition == "electrode_breakage":
            params["cut_s"], params["ramp_s"] = spec.cut_s, spec.ramp_s
        buildup = drawn.buildup_s if spec.buildup_s is None else spec.buildup_s
        recovery = drawn.recovery_s if spec.recovery_s is None else spec.recovery_s
        excess = buildup + recovery - spec.duration_s
        if excess > 0:  # only a drawn part can exceed: shrink the drawn one(s)
            if spec.buildup_s is None and spec.recovery_s is None:
                shrink = spec.duration_s / (buildup + recovery)
                buildup, recovery = buildup * shrink, recovery * shrink
            elif spec.buildup_s is None:
                buildup -= excess
            else:
                recovery -= excess
        hold = max(spec.duration_s - buildup - recovery, 0.0)
        events.append(ConditionEvent(spec.condition, spec.start_s, buildup, hold, recovery, params))
    return events


def simulate_scenario(scenario: Scenario, *, render: bool = True) -> Iterator[Episode]:
    """Simulate each furnace's episode, in scenario order, deterministically from the seed.

    Furnace i draws its parameters and episode streams as furnace i of a dataset run with the
    same seed does (`episode.episode_seeds`); scheduled conditions take their parameters from
    a separate stream, so adding a condition never changes the furnace or its nuisances.
    """
    seeds = episode_seeds(scenario.seed, len(scenario.furnaces), 1)
    for i, (spec, (params_ss, episode_ss)) in enumerate(zip(scenario.furnaces, seeds, strict=True)):
        fp = random_furnace_params(spec.furnace_id, np.random.default_rng(params_ss))
        events = None
        if spec.conditions is not None:
            cond_ss = np.random.SeedSequence(scenario.seed, spawn_key=(i, _CONDITION_SPAWN))
            events = build_events(spec.conditions, np.random.default_rng(cond_ss))
        yield simulate_episode(
            fp,
            scenario.config_for(spec),
            episode_ss[0],
            name=f"scenario-s{scenario.seed}-{spec.furnace_id}",
            render=render,
            events=events,
            faults=spec.faults,
        )


def _conditions(value: Any, where: str) -> tuple[ConditionSpec, ...] | None:
    if value == "random":
        return None
    if not isinstance(value, list):
        msg = f'{where}.conditions must be a list of tables or "random", got {value!r}'
        raise ValueError(msg)
    out = []
    for k, item in enumerate(value):
        at = f"{where}.conditions[{k}]"
        if not isinstance(item, Mapping):
            msg = f'{at} must be a table like {{condition = "overheating", start_s = 180, ...}}'
            raise ValueError(msg)
        _known(item, "condition", at, required=("condition", "start_s", "duration_s"))
        optional = [key for key in _KEYS["condition"][3:] if key in item]
        opt = {key: _number(item[key], f"{at}.{key}") for key in optional}
        name = _str(item["condition"], f"{at}.condition")
        start, dur = (_number(item[key], f"{at}.{key}") for key in ("start_s", "duration_s"))
        out.append(ConditionSpec(name, start, dur, **opt))
    return tuple(out)


def _faults(
    value: Any, where: str, *, seed: int, index: int, end_s: float
) -> tuple[FaultEvent, ...] | None:
    if value == "random":
        return None
    if not isinstance(value, list):
        msg = f'{where}.faults must be a list of tables or "random", got {value!r}'
        raise ValueError(msg)
    out = []
    for k, item in enumerate(value):
        at = f"{where}.faults[{k}]"
        if not isinstance(item, Mapping):
            msg = f'{at} must be a table like {{modality = "camera", kind = "frozen", ...}}'
            raise ValueError(msg)
        _known(item, "fault", at, required=("kind", "start_s"))
        kind = _str(item["kind"], f"{at}.kind")  # its value is checked by _validate_fault
        modality = _str(item.get("modality", FAULT_MODALITY.get(kind, "")), f"{at}.modality")
        start = _number(item["start_s"], f"{at}.start_s")
        end = end_s  # no duration: until the end of the episode
        if "duration_s" in item:
            end = min(start + _number(item["duration_s"], f"{at}.duration_s"), end_s)
        default_value = {"skew": 2.0, "occluded": 0.75}.get(kind, 0.0)
        value_ = _number(item.get("value", default_value), f"{at}.value")
        phase = _int(item.get("phase", -1), f"{at}.phase")
        default_seed = (seed * 1009 + index * 101 + k) % 2**31  # stable per fault
        fault_seed = _int(item.get("seed", default_seed), f"{at}.seed")
        out.append(FaultEvent(kind, modality, start, end, phase, value_, fault_seed))
    return tuple(out)


def _validate(s: Scenario) -> None:
    if not isinstance(s.seed, int) or s.seed < 0:
        msg = f"seed must be an integer >= 0, got {s.seed!r}"
        raise ValueError(msg)
    if not s.minutes * 60.0 >= LEAD_IN_S + 60.0:
        msg = f"minutes={s.minutes}: need >= 3 (2 min of normal lead-in plus 1 min of run)"
        raise ValueError(msg)
    if not 0.0 < s.camera_fps <= 30.0:
        msg = f"camera_fps must be in (0, 30] frames per second, got {s.camera_fps}"
        raise ValueError(msg)
    if not s.furnaces:
        msg = "a scenario needs at least one furnace"
        raise ValueError(msg)
    seen: set[str] = set()
    for f in s.furnaces:
        if not FURNACE_ID_RE.fullmatch(f.furnace_id):
            msg = (
                f"furnace id {f.furnace_id!r} is not allowed: use 1-64 letters, digits, '_' "
                "or '-', starting with a letter or digit (no ':', '.', spaces or globs)"
            )
            raise ValueError(msg)
        if f.furnace_id in seen:
            msg = f"furnace id {f.furnace_id!r} appears twice; ids must be unique"
            raise ValueError(msg)
        seen.add(f.furnace_id)
        _validate_conditions(f.conditions or (), f"furnace {f.furnace_id!r}", s.duration_s)
        for k, fault in enumerate(f.faults or ()):
            _validate_fault(fault, f"furnace {f.furnace_id!r}: faults[{k}]", s.duration_s)


def _validate_conditions(conds: Sequence[ConditionSpec], where: str, duration_s: float) -> None:
    for c in conds:
        at = f"{where}: {c.condition} at {c.start_s:g} s"
        if c.condition not in CONDITIONS:
            hint = ""
            if c.condition == "normal":
                hint = " (normal is no condition: leave conditions empty for a normal furnace)"
            msg = (
                f"{where}: unknown condition {c.condition!r}{hint}; choose from "
                f"{', '.join(CONDITIONS)}"
            )
            raise ValueError(msg)
        if c.start_s < LEAD_IN_S:
            msg = (
                f"{at}: start_s must be >= {LEAD_IN_S:g} s, the normal lead-in every episode "
                "opens with so baselines exist (docs/design/furnace.md); move the condition later"
            )
            raise ValueError(msg)
        if c.start_s >= duration_s:
            msg = f"{at}: start_s is beyond the episode ({duration_s:g} s); raise minutes"
            raise ValueError(msg)
        if not c.duration_s > 0:
            msg = f"{at}: duration_s must be > 0, got {c.duration_s:g}"
            raise ValueError(msg)
        if c.end_s > duration_s:
            msg = (
                f"{at}: ends at {c.end_s:g} s, beyond the episode ({duration_s:g} s); shorten "
                "duration_s or raise minutes"
            )
            raise ValueError(msg)
        if not 0.0 < c.severity <= 2.0:
            msg = f"{at}: severity must be in (0, 2] (1.0 = as simulated), got {c.severity:g}"
            raise ValueError(msg)
        parts = [x for x in (c.buildup_s, c.recovery_s) if x is not None]
        if any(x < 0 for x in parts) or sum(parts) > c.duration_s:
            msg = f"{at}: buildup_s and recovery_s must be >= 0 and fit in duration_s"
            raise ValueError(msg)
        if c.cut_s < 0 or c.ramp_s < 0:
            msg = f"{at}: cut_s and ramp_s must be >= 0"
            raise ValueError(msg)
        same = [d.severity for d in conds if d.condition == c.condition]
        if len(set(same)) > 1:
            msg = f"{where}: all {c.condition} events of one furnace must share one severity"
            raise ValueError(msg)
    ordered = sorted(conds, key=lambda c: c.start_s)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            nested = a.condition == "overheating" and b.condition == "eruption"
            if b.start_s < a.busy_until_s and not (nested and b.end_s <= a.end_s):
                msg = (
                    f"{where}: {b.condition} at {b.start_s:g} s overlaps {a.condition} "
                    f"({a.start_s:g}-{a.busy_until_s:g} s"
                    + (", with its power cut and ramp" if a.busy_until_s > a.end_s else "")
                    + "); conditions may not overlap, except an eruption inside an overheating"
                )
                raise ValueError(msg)


def _validate_fault(f: FaultEvent, where: str, duration_s: float) -> None:
    if f.kind not in FAULT_KINDS:
        msg = f"{where}: kind {f.kind!r} is no sensor fault; choose from {', '.join(FAULT_KINDS)}"
        raise ValueError(msg)
    if f.modality not in MODALITIES:
        msg = f"{where}: modality must be 'current' or 'camera', got {f.modality!r}"
        raise ValueError(msg)
    if f.kind != "skew" and FAULT_MODALITY[f.kind] != f.modality:
        msg = f"{where}: {f.kind!r} is a {FAULT_MODALITY[f.kind]} fault, not a {f.modality} one"
        raise ValueError(msg)
    if not 0.0 <= f.start_s < duration_s:
        msg = f"{where}: start_s={f.start_s:g} must be in [0, {duration_s:g}) (the episode)"
        raise ValueError(msg)
    if not f.end_s > f.start_s:
        msg = f"{where}: duration_s must be > 0 (omit it to last until the end)"
        raise ValueError(msg)
    if f.phase != -1 and not (f.kind in ("nan", "stuck", "clipped") and 0 <= f.phase <= 2):
        msg = f"{where}: phase must be 0, 1 or 2 (nan/stuck/clipped only), or -1 for all phases"
        raise ValueError(msg)
    if f.kind == "skew" and not 0.0 < abs(f.value) <= 60.0:
        msg = f"{where}: a skew needs value = the offset in seconds, 0 < |value| <= 60"
        raise ValueError(msg)
    if f.kind == "occluded" and not 0.0 < f.value <= 1.0:
        msg = f"{where}: an occlusion needs value = covered fraction of the frame, in (0, 1]"
        raise ValueError(msg)


def _known(
    table: Mapping[str, Any], kind: str, where: str, *, required: tuple[str, ...] = ()
) -> None:
    unknown = sorted(set(table) - set(_KEYS[kind]))
    if unknown:
        msg = f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_KEYS[kind])}"
        raise ValueError(msg)
    missing = [key for key in required if key not in table]
    if missing:
        msg = f"{where} is missing {', '.join(missing)}"
        raise ValueError(msg)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"{where} must be a finite number, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{where} must be an integer, got {value!r}"
        raise ValueError(msg)
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        msg = f"{where} must be a string, got {value!r}"
        raise ValueError(msg)
    return value
