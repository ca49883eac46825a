"""Live replay: the stand-in for a plant, publishing simulated sensor streams into Redis.

Each furnace's episode is simulated up front (`scenario.simulate_scenario`), its sensor faults
applied exactly as `faults.apply_faults` gives the observed streams, and the entries are XADDed
in sensor-time order, paced against the wall clock. Stream format: docs/simulator.md, "Live
replay into Redis"; keys and trimming: docs/design/serving.md 1.1 and 1.6.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import redis
from numpy.typing import NDArray
from redis.typing import EncodableT, FieldT

from simulator.config import CLASS_INDEX, CURRENT_RATE_HZ, MODALITIES
from simulator.faults import apply_faults
from simulator.png import encode_png
from simulator.scenario import FURNACE_ID_RE, Scenario, simulate_scenario
from simulator.types import Episode

logger = logging.getLogger(__name__)

CURRENT_MAXLEN = 7200  # one hour at 2 Hz (docs/design/serving.md 1.6)
CAMERA_MAXLEN = 1200  # ten minutes at 2 fps: frames dominate memory
_TICK_S = 0.05  # longest sleep between two checks of the clock, the stop event and the limit
_CURRENT, _CAMERA = 0, 1  # modality codes in the timeline


def stream_key(prefix: str, furnace_id: str, modality: str) -> str:
    """The stream key of one furnace and modality: `{prefix}furnace:{id}:{modality}`.

    Raises:
        ValueError: the id does not match `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`, or the modality
            is not `current` or `camera`.
    """
    if not FURNACE_ID_RE.fullmatch(furnace_id):
        msg = f"furnace id {furnace_id!r} must match {FURNACE_ID_RE.pattern}"
        raise ValueError(msg)
    if modality not in MODALITIES:
        msg = f"modality must be one of {MODALITIES}, got {modality!r}"
        raise ValueError(msg)
    return f"{prefix}furnace:{furnace_id}:{modality}"


class ConditionWindow(NamedTuple):
    """Ground truth of one condition event, in sensor time (Unix seconds)."""

    furnace_id: str
    condition: str
    onset_ts: float  # severity starts to rise
    peak_ts: float  # end of the build-up
    end_ts: float  # severity back to 0
    label_start_ts: float  # first 2 Hz sample labelled with the condition (s >= s_label)
    label_end_ts: float  # end of the last labelled sample (its ts + 0.5 s)


class FaultWindow(NamedTuple):
    """One sensor fault, in sensor time: a health problem, never a condition."""

    furnace_id: str
    modality: str
    kind: str
    start_ts: float
    end_ts: float
    value: float  # skew offset in s, occlusion coverage, else 0


@dataclass
class ReplayStats:
    """What one `Replay.run` published."""

    published: dict[str, dict[str, int]]  # furnace id -> modality -> entries
    sim_seconds: float  # sensor time reached (t_sim of the last published entry)
    wall_seconds: float
    reason: str  # "done" | "stopped" (stop event) | "max_seconds"
    maxlen: dict[str, int] = field(default_factory=dict)  # MAXLEN ~ cap per modality

    def total(self, modality: str | None = None) -> int:
        """Entries published over all furnaces, for one modality or both."""
        return sum(
            n for per in self.published.values() for m, n in per.items() if modality in (None, m)
        )


class _Observed(NamedTuple):
    """One furnace's observed streams (faults applied); the clean episode is not kept."""

    furnace_id: str
    keys: dict[str, str]  # modality -> stream key
    t_cur: NDArray[np.float64]  # (N,) sensor seconds since t0, skew applied
    current: NDArray[np.float32]  # (N, 3) A
    t_frame: NDArray[np.float64]  # (F,)
    frames: NDArray[np.uint8]  # (F, 64, 64, 3)


class Replay:
    """Publish a scenario's furnaces into Redis Streams, paced in sensor time.

    Args:
        client: a synchronous redis-py client (bytes or decoded responses both work).
        scenario: furnaces and schedules (`scenario.load_scenario`, `random_scenario`).
        prefix: key prefix (FURNACE_KEY_PREFIX); keys are `{prefix}furnace:{id}:{modality}`.
        speed: sensor seconds per wall second; 0 or `inf` publishes as fast as possible.
        t0: sensor time (Unix seconds) of t_sim = 0; None: the wall clock once the episodes
            are simulated (at the end of construction).
        maxlen_current: approximate cap (`MAXLEN ~`) of each current stream.
        maxlen_camera: approximate cap of each camera stream.
        png_level: zlib level of the PNG frames (1: fast, 9: small).
        batch: most entries in one pipeline (one tick at real-time speed is one pipeline).
        reconnect: when Redis refuses or drops the connection, log a line and retry with
            backoff (up to 10 s between tries) until it answers or `stop` is set, then carry on
            with the entries due by then; False: raise.
    """

    def __init__(
        self,
        client: redis.Redis,
        scenario: Scenario,
        *,
        prefix: str = "",
        speed: float = 1.0,
        t0: float | None = None,
        maxlen_current: int = CURRENT_MAXLEN,
        maxlen_camera: int = CAMERA_MAXLEN,
        png_level: int = 1,
        batch: int = 500,
        reconnect: bool = False,
    ) -> None:
        if math.isnan(speed) or speed < 0:
            msg = f"speed must be >= 0 (0 or inf: as fast as possible), got {speed}"
            raise ValueError(msg)
        if min(maxlen_current, maxlen_camera, batch) < 1:
            msg = "maxlen_current, maxlen_camera and batch must be >= 1"
            raise ValueError(msg)
        if not 0 <= png_level <= 9:
            msg = f"png_level must be a zlib level 0..9, got {png_level}"
            raise ValueError(msg)
        self.client = client
        self.scenario = scenario
        self.prefix = prefix
        self.speed = speed
        self.maxlen = {"current": maxlen_current, "camera": maxlen_camera}
        self.png_level = png_level
        self.batch = batch
        self.reconnect = reconnect
        self._observed: list[_Observed] = []
        self._truth: list[tuple[list[dict[str, Any]], NDArray[np.float64], NDArray[np.int8]]] = []
        self._faults: list[FaultWindow] = []
        parts: list[tuple[NDArray[np.float64], int, int, NDArray[np.int64]]] = []
        for f, ep in enumerate(simulate_scenario(scenario)):
            self._keep(ep)
            obs = apply_faults(ep)
            cur_idx = np.flatnonzero(obs.cur_present)
            frame_idx = np.flatnonzero(obs.frame_present)
            # Pacing uses the true simulation time; the ts field carries any clock skew.
            parts.append((ep.t_cur[cur_idx], f, _CURRENT, cur_idx))
            parts.append((ep.t_frame[frame_idx], f, _CAMERA, frame_idx))
            keys = {m: stream_key(prefix, ep.furnace_id, m) for m in MODALITIES}
            self._observed.append(
                _Observed(ep.furnace_id, keys, obs.t_cur, obs.current, obs.t_frame, obs.frames)
            )
        t_sim = np.concatenate([p[0] for p in parts])
        furnace = np.concatenate([np.full(p[0].shape, p[1], np.int32) for p in parts])
        modality = np.concatenate([np.full(p[0].shape, p[2], np.int8) for p in parts])
        index = np.concatenate([p[3] for p in parts])
        order = np.lexsort((furnace, modality, t_sim))  # time, then current before camera
        self._t_sim = t_sim[order]
        self._furnace, self._modality, self._index = furnace[order], modality[order], index[order]
        self.t0 = time.time() if t0 is None else float(t0)

    @property
    def furnace_ids(self) -> list[str]:
        return [o.furnace_id for o in self._observed]

    @property
    def fast(self) -> bool:
        return self.speed == 0 or math.isinf(self.speed)

    def keys(self, furnace_id: str) -> dict[str, str]:
        """Stream keys of one furnace, by modality."""
        for obs in self._observed:
            if obs.furnace_id == furnace_id:
                return dict(obs.keys)
        msg = f"furnace {furnace_id!r} is not in this replay ({', '.join(self.furnace_ids)})"
        raise KeyError(msg)

    def schedule(self) -> list[ConditionWindow]:
        """Condition events per furnace in sensor time, for scoring detections.

        A normal furnace (no conditions) contributes nothing; nuisances are not conditions.
        """
        out = []
        for obs, (events, t_cur, label_cur) in zip(self._observed, self._truth, strict=True):
            for ev in events:
                inside = (t_cur >= ev["onset_s"]) & (t_cur < ev["end_s"])
                labelled = np.flatnonzero(inside & (label_cur == CLASS_INDEX[ev["condition"]]))
                first, last = ev["onset_s"], ev["end_s"]
                if labelled.size:
                    first = t_cur[labelled[0]]
                    last = t_cur[labelled[-1]] + 1.0 / CURRENT_RATE_HZ
                out.append(
                    ConditionWindow(
                        obs.furnace_id,
                        str(ev["condition"]),
                        self.t0 + float(ev["onset_s"]),
                        self.t0 + float(ev["buildup_end_s"]),
                        self.t0 + float(ev["end_s"]),
                        self.t0 + float(first),
                        self.t0 + float(last),
                    )
                )
        return out

    def fault_schedule(self) -> list[FaultWindow]:
        """Sensor faults per furnace in sensor time (health ground truth)."""
        t0 = self.t0
        return [w._replace(start_ts=t0 + w.start_ts, end_ts=t0 + w.end_ts) for w in self._faults]

    def run(
        self,
        stop: threading.Event | None = None,
        max_seconds: float | None = None,
        progress: Callable[[float, int], None] | None = None,
    ) -> ReplayStats:
        """Publish every entry once its sensor time is due, until done, stopped or out of time.

        Each call starts from the first entry, with the same `t0`.

        Args:
            stop: set it (from another thread) to stop after the current tick.
            max_seconds: wall-clock limit.
            progress: called after each tick with (sensor seconds reached, entries published).

        Returns:
            Entries published per furnace and modality, and why the run ended.

        Raises:
            redis.RedisError: the server is unreachable (without `reconnect`) or refuses a
                write.
        """
        n = self._t_sim.shape[0]
        counts = np.zeros((len(self._observed), 2), np.int64)
        start = time.monotonic()
        i, reason = 0, "done"
        while i < n:
            elapsed = time.monotonic() - start
            if stop is not None and stop.is_set():
                reason = "stopped"
                break
            if max_seconds is not None and elapsed >= max_seconds:
                reason = "max_seconds"
                break
            if self.fast:
                j = min(i + self.batch, n)
            else:
                due = int(np.searchsorted(self._t_sim, elapsed * self.speed, side="right"))
                j = min(due, i + self.batch)
            if j == i:  # nothing due yet: sleep until the next entry, a tick at most
                wait = min(max(self._t_sim[i] / self.speed - elapsed, 0.001), _TICK_S)
                if max_seconds is not None:
                    wait = min(wait, max(max_seconds - elapsed, 0.0))
                if stop is not None:
                    stop.wait(wait)
                else:
                    time.sleep(wait)
                continue
            if not self._publish(i, j, stop):
                reason = "stopped"
                break
            np.add.at(counts, (self._furnace[i:j], self._modality[i:j]), 1)
            if progress is not None:
                progress(float(self._t_sim[j - 1]), j - i)
            i = j
        published = {
            o.furnace_id: {m: int(counts[f, k]) for k, m in enumerate(MODALITIES)}
            for f, o in enumerate(self._observed)
        }
        reached = float(self._t_sim[i - 1]) if i else 0.0
        wall = time.monotonic() - start
        logger.info("replay %s: %d entries in %.1f s", reason, int(counts.sum()), wall)
        return ReplayStats(published, reached, wall, reason, dict(self.maxlen))

    def _keep(self, ep: Episode) -> None:
        """Keep what the ground truth needs (events, labels), not the clean arrays."""
        self._truth.append((ep.events, ep.t_cur.copy(), ep.label_cur.copy()))
        for fe in ep.faults:  # in simulation seconds until fault_schedule() adds t0
            window = FaultWindow(
                ep.furnace_id, fe.modality, fe.kind, fe.start_s, fe.end_s, fe.value
            )
            self._faults.append(window)

    def _publish(self, i: int, j: int, stop: threading.Event | None = None) -> bool:
        """Publish entries i..j-1, retrying a refused or dropped connection when `reconnect`
        is set (a dropped pipeline may be sent twice: the service ignores duplicate `ts`).
        Returns False when `stop` was set while waiting for Redis."""
        delay = 0.5
        while True:
            try:
                self._publish_once(i, j)
                return True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not self.reconnect:
                    raise
                logger.warning("replay: Redis unreachable (%s); retrying in %.1f s", exc, delay)
                if stop is not None:
                    if stop.wait(delay):
                        return False
                else:
                    time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _publish_once(self, i: int, j: int) -> None:
        """XADD entries i..j-1 of the timeline in one pipeline (no transaction)."""
        pipe = self.client.pipeline(transaction=False)
        rows = zip(
            self._furnace[i:j].tolist(),
            self._modality[i:j].tolist(),
            self._index[i:j].tolist(),
            strict=True,
        )
        for f, m, k in rows:
            obs = self._observed[f]
            fields: dict[FieldT, EncodableT]
            if m == _CURRENT:
                a, b, c = (f"{x:.2f}" for x in obs.current[k].tolist())  # NaN -> "nan"
                fields = {"ts": f"{self.t0 + obs.t_cur[k]:.3f}", "a": a, "b": b, "c": c}
            else:
                image = encode_png(obs.frames[k], level=self.png_level)
                fields = {"ts": f"{self.t0 + obs.t_frame[k]:.3f}", "image": image}
            modality = MODALITIES[m]
            pipe.xadd(obs.keys[modality], fields, maxlen=self.maxlen[modality], approximate=True)
        pipe.execute()
