"""ONNX Runtime engine: windows -> shared codes -> per-condition probabilities -> a decision.

One `InferenceSession` per modality graph, built from a verified bundle, checked against the
manifest's input/output names and warmed on the bundle's golden windows before it serves
(docs/design/serving.md 3.1, 5.5). `run()` is thread-safe and releases the GIL; callers run `score`
in a worker thread, never on the event loop.

Decision (the rule `furnace evaluate` scores for the bundle's `thresholds.fusion`):
- "max_ratio": each usable modality's score 1 - p(normal) is divided by that modality's
  calibrated threshold; the window's score is the larger ratio (`lead` names its modality)
  and it is abnormal when the score exceeds the fused threshold (both usable) or that
  modality's `*_alone` ratio threshold (one usable; 1.0 unless the alert calibration set
  it): either sensor can raise the alarm. The probabilities are the usable modalities'
  average (they name the condition better than either view alone).
- "average" (older bundles): the usable modalities' probabilities are averaged, score =
  1 - p(normal) against the threshold calibrated for that modality set.
The condition is the most probable class; when the window is abnormal but `normal` is still
the most probable class, it is the most probable abnormal class. The rule is the module-level
`decide` (per-modality results + usable modalities + thresholds -> a `Decision`): the engine
calls it for every window and `furnace.alert_calibration` re-decides stored results with it
under candidate thresholds, so there is no second copy.

Memory heads (the manifest's optional `memory`, docs/service.md "Memory"): after a modality's
window graph has run, its codes go into the engine's `CodeHistory` (service/memory.py) and the
modality's memory graph corrects the window graph's probabilities with them and the codes of
earlier windows of the same furnace. Role "decide": its probabilities and score replace the
window graph's; role "name": its probabilities replace the window graph's (the condition) and
the window graph's score still decides (`window_probs` / `window_score` keep the latter). The
history is the one mutable part of an engine; offline replays pass their own (`new_history`).

Per-furnace adaptation (the manifest's optional `adaptation`, service/adaptation.py): before
the decision, each usable modality's score is lowered by the furnace's standing bias over
its recent windows (`ScoreHistory`, the engine's second mutable part; offline replays pass
`new_adapter()`); the raw score stays in the result as `raw_score`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from service.adaptation import ScoreHistory
from service.bundle import (
    MEMORY_INPUTS,
    MEMORY_OUTPUTS,
    OUTPUT_NAMES,
    RATIO_FLOOR,
    BundleError,
    GraphSpec,
    Manifest,
    Thresholds,
    shape_fits,
    verify_bundle,
)
from service.detection import Detection, ModalityResult
from service.memory import CodeHistory
from service.signing import BundleTrust
from service.types import MODALITIES, Window

logger = logging.getLogger(__name__)

Observer = Callable[[str, float, int], None]
GOLDEN_PROB_TOL = 1e-3
MEMORY_INPUT_NAMES = tuple(name for name, _ in MEMORY_INPUTS)
GOLDEN_CODE_AGREEMENT = 0.95  # near-ties may flip across CPUs (docs/design/serving.md 3.3)


def _session(path: Path, threads: int, providers: list[str]) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=providers)


def choose_providers() -> list[str]:
    """CUDA when onnxruntime-gpu offers it, else the CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Engine:
    """A loaded, verified and warmed bundle; swap the whole object to change it. Immutable
    once built except for `history` (the memory heads' codes, service/memory.py)."""

    def __init__(
        self, folder: str | Path, *, intra_op_threads: int = 1, trust: BundleTrust | None = None
    ) -> None:
        """Verify (the signature too, given `trust`), build the sessions and warm them.

        Raises:
            BundleError: the bundle must not be served.
        """
        self.manifest: Manifest = verify_bundle(folder, trust=trust)
        self.providers = choose_providers()
        self.provider = self.providers[0]
        self.sessions: dict[str, ort.InferenceSession] = {}
        for m in MODALITIES:
            spec = self.manifest.graphs[m]
            self.sessions[m] = self._load(spec, OUTPUT_NAMES, intra_op_threads)
        self.memory_sessions: dict[str, ort.InferenceSession] = {}
        self.history: CodeHistory | None = None
        memory = self.manifest.memory
        if memory is not None:
            shapes = memory.input_shapes(len(self.manifest.class_names))
            for m in MODALITIES:
                spec = memory.graphs[m]
                self.memory_sessions[m] = self._load(spec, MEMORY_OUTPUTS, intra_op_threads, shapes)
            self.history = self.new_history()
        self.adapter: ScoreHistory | None = self.new_adapter()
        self.bundle_sha256 = self.manifest.bundle_sha256
        self._warm_up()

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def has_memory(self) -> bool:
        """The bundle has memory heads (the manifest's `memory` section)."""
        return self.manifest.memory is not None

    def new_history(self) -> CodeHistory | None:
        """An empty history for this bundle's memory heads (None without them): each offline
        replay scores with its own, so no replay reads another's windows."""
        memory = self.manifest.memory
        return None if memory is None else CodeHistory(memory, self.manifest.codebook_size)

    def new_adapter(self) -> ScoreHistory | None:
        """An empty score history for per-furnace adaptation (None without it): each offline
        replay adapts with its own."""
        spec = self.manifest.adaptation
        return None if spec is None else ScoreHistory(spec)

    def reset_memory(self) -> None:
        """Forget the engine's own histories (every furnace starts empty, unprimed)."""
        if self.history is not None:
            self.history.clear()
        if self.adapter is not None:
            self.adapter.clear()

    def _load(
        self,
        spec: GraphSpec,
        outputs: Sequence[str],
        threads: int,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> ort.InferenceSession:
        """A session for one graph of the bundle, checked against the manifest: input names
        and types, output names, the fixed input dimensions in `shapes` (name -> dimensions
        after the batch) and the model version stamped in the graph.
        """
        path = self.manifest.folder / spec.file
        try:
            session = _session(path, threads, self.providers)
        except Exception as exc:  # ORT raises its own types for broken graphs
            msg = f"{path}: ONNX Runtime cannot load it ({exc})"
            raise BundleError(msg) from exc
        got_in = [(i.name, i.type) for i in session.get_inputs()]
        want_in = [(t.name, t.type) for t in spec.inputs]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != want_in or got_out != list(outputs):
            msg = f"{path}: inputs {got_in} / outputs {got_out} differ from the manifest's "
            msg += f"{want_in} / {list(outputs)}"
            raise BundleError(msg)
        for i in session.get_inputs():
            want = (shapes or {}).get(i.name)
            dims = tuple(d if isinstance(d, int) else None for d in i.shape)
            if want is not None and not shape_fits(dims, want):
                msg = f"{path}: input {i.name} has shape {i.shape}, but the manifest "
                msg += f"needs [batch, *{list(want)}]"
                raise BundleError(msg)
        self._check_version(session, path)
        return session

    def _check_version(self, session: ort.InferenceSession, path: Path) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("model_version") != self.manifest.model_version:
            msg = f"{path}: graph model_version {meta.get('model_version')!r} differs from the "
            msg += f"manifest's {self.manifest.model_version!r}"
            raise BundleError(msg)

    def _warm_up(self) -> None:
        """Run the golden windows and compare with the reference outputs saved at export."""
        path = self.manifest.folder / self.manifest.golden
        try:
            with np.load(path) as golden:
                data = {k: golden[k] for k in golden.files}
        except (OSError, ValueError) as exc:
            msg = f"{path}: cannot read the golden windows ({exc})"
            raise BundleError(msg) from exc
        for m, session in self.sessions.items():
            names = [i.name for i in session.get_inputs()]
            try:
                feeds = {n: data[f"{m}/{n}"] for n in names}
                ref_codes, ref_probs = data[f"{m}/codes"], data[f"{m}/probs"]
            except KeyError as exc:
                msg = f"{path}: no golden array {exc} for the {m} graph"
                raise BundleError(msg) from exc
            out = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds), strict=True))
            agree = float((out["codes"] == ref_codes).mean())
            diff = float(np.abs(out["probs"] - ref_probs).max())
            if agree < GOLDEN_CODE_AGREEMENT or diff > GOLDEN_PROB_TOL:
                msg = f"{path}: the {m} graph disagrees with its golden outputs (codes "
                msg += f"{agree:.1%} equal, max probability difference {diff:.2g})"
                raise BundleError(msg)
        for m, session in self.memory_sessions.items():
            try:
                feeds = {n: data[f"memory/{m}/{n}"] for n in MEMORY_INPUT_NAMES}
                ref_probs = data[f"memory/{m}/probs"]
            except KeyError as exc:
                msg = f"{path}: no golden array {exc} for the {m} memory graph"
                raise BundleError(msg) from exc
            try:
                probs = session.run(["probs"], feeds)[0]
                diff = float(np.abs(probs - ref_probs).max())
            except Exception as exc:  # ORT's own types: golden arrays of the wrong shape
                msg = f"{path}: the {m} memory graph cannot run its golden histories ({exc})"
                raise BundleError(msg) from exc
            if not diff <= GOLDEN_PROB_TOL:
                msg = f"{path}: the {m} memory graph disagrees with its golden outputs (max "
                msg += f"probability difference {diff:.2g})"
                raise BundleError(msg)

    def run(self, modality: str, feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """One batched run of a modality's graph; refuses non-finite outputs."""
        out = self.sessions[modality].run(list(OUTPUT_NAMES), feeds)
        result = dict(zip(OUTPUT_NAMES, out, strict=True))
        for name in ("probs", "score", "segment_scores"):
            if not np.isfinite(result[name]).all():
                msg = f"the {modality} graph returned non-finite {name}"
                raise FloatingPointError(msg)
        return result

    def run_memory(
        self,
        modality: str,
        codes: NDArray[np.int64],
        present: NDArray[np.float32],
        window_probs: NDArray[np.float32],
    ) -> dict[str, NDArray[Any]]:
        """One batched run of a modality's memory graph (the history's codes and presence,
        the window graph's probabilities of slot 0); refuses non-finite outputs."""
        feeds = {"codes": codes, "present": present, "window_probs": window_probs}
        out = self.memory_sessions[modality].run(list(MEMORY_OUTPUTS), feeds)
        result = dict(zip(MEMORY_OUTPUTS, out, strict=True))
        for name, value in result.items():
            if not np.isfinite(value).all():
                msg = f"the {modality} memory graph returned non-finite {name}"
                raise FloatingPointError(msg)
        return result

    def score(
        self,
        windows: list[Window],
        observe: Observer | None = None,
        *,
        history: CodeHistory | None = None,
        adapter: ScoreHistory | None = None,
    ) -> list[Detection]:
        """Score windows (any furnaces), one batched run per modality (and, with memory heads,
        one memory run per modality after it).

        `observe(modality, seconds, batch_size)` is called after each modality's runs
        (metrics). `history`: the memory heads' codes to read and extend (default: the
        engine's own; offline replays pass `new_history()`); `adapter` likewise for
        per-furnace adaptation (`new_adapter()`).
        """
        per: dict[str, dict[int, ModalityResult]] = {m: {} for m in MODALITIES}
        cur = [
            (i, w.current)
            for i, w in enumerate(windows)
            if w.current is not None
            and np.isfinite(w.current.x).all()
            and np.isfinite(w.current.baseline).all()
        ]
        if cur:
            feeds = {
                "current_a": np.stack([c.x for _, c in cur]).astype(np.float32),
                "baseline_a": np.stack([c.baseline for _, c in cur]).astype(np.float32),
            }
            t0 = time.perf_counter()
            per["current"] = self._split([i for i, _ in cur], self.run("current", feeds))
            self._remember("current", windows, per["current"], history or self.history)
            if observe is not None:
                observe("current", time.perf_counter() - t0, len(cur))
        cam = [(i, w.camera) for i, w in enumerate(windows) if w.camera is not None]
        if cam:
            frames = np.stack([c.frames for _, c in cam]).astype(np.uint8)
            t0 = time.perf_counter()
            per["camera"] = self._split([i for i, _ in cam], self.run("camera", {"frames": frames}))
            self._remember("camera", windows, per["camera"], history or self.history)
            if observe is not None:
                observe("camera", time.perf_counter() - t0, len(cam))
        self._adapt(windows, per, adapter or self.adapter)
        return [self._decide(i, w, per) for i, w in enumerate(windows)]

    @staticmethod
    def _adapt(
        windows: list[Window],
        per: dict[str, dict[int, ModalityResult]],
        adapter: ScoreHistory | None,
    ) -> None:
        """With per-furnace adaptation: each usable modality's score becomes the adapted one
        (the raw score kept as `raw_score`); unusable ones are neither read nor stored."""
        if adapter is None:
            return
        for m in MODALITIES:
            index = [i for i in sorted(per[m]) if windows[i].usable(m)]
            if not index:
                continue
            batch = [(windows[i].furnace_id, windows[i].end, per[m][i].score) for i in index]
            for i, score in zip(index, adapter.adjust(m, batch), strict=True):
                per[m][i] = replace(per[m][i], score=score, raw_score=per[m][i].score)

    def _remember(
        self,
        modality: str,
        windows: list[Window],
        results: dict[int, ModalityResult],
        history: CodeHistory | None,
    ) -> None:
        """With memory heads: store the batch's codes, run the memory graph on each window's
        slots and put its probabilities (role "name") or its probabilities and score (role
        "decide") in place of the window graph's (kept as `window_probs`, `window_score`).
        Without them, nothing."""
        if not self.memory_sessions or history is None or not results:
            return
        index = sorted(results)
        batch = [(windows[i].furnace_id, windows[i].end, results[i].codes) for i in index]
        codes, present = history.gather(modality, batch)
        window_probs = np.asarray([results[i].probs for i in index], np.float32)
        out = self.run_memory(modality, codes, present, window_probs)
        decides = self.manifest.memory is not None and self.manifest.memory.role == "decide"
        for k, i in enumerate(index):
            r = results[i]
            results[i] = replace(
                r,
                probs=out["probs"][k].astype(float).tolist(),
                score=float(out["score"][k]) if decides else r.score,
                window_score=r.score,
                window_probs=r.probs,
            )

    @staticmethod
    def _split(index: list[int], out: dict[str, NDArray[Any]]) -> dict[int, ModalityResult]:
        return {
            i: ModalityResult(
                codes=out["codes"][k].astype(int).tolist(),
                probs=out["probs"][k].astype(float).tolist(),
                score=float(out["score"][k]),
                segment_scores=out["segment_scores"][k].astype(float).tolist(),
            )
            for k, i in enumerate(index)
        }

    def _decide(self, i: int, w: Window, per: dict[str, dict[int, ModalityResult]]) -> Detection:
        results = {m: per[m][i] for m in MODALITIES if i in per[m]}
        used = tuple(m for m in MODALITIES if m in results and w.usable(m))
        agreement = None
        if "current" in results and "camera" in results:
            a, b = results["current"].codes, results["camera"].codes
            agreement = float(np.mean(np.asarray(a) == np.asarray(b)))
        d = decide(results, used, self.manifest.thresholds, self.manifest.class_names)
        return d.detection(
            w.furnace_id,
            w.end,
            used,
            self.manifest.class_names,
            health={m: w.health(m) for m in MODALITIES},
            per_modality=results,
            code_agreement=agreement,
            model_version=self.model_version,
        )


@dataclass(frozen=True)
class Decision:
    """What `decide` makes of one window's modality results (the rest of a `Detection` is
    bookkeeping: furnace, window end, health, codes).
    """

    condition: str  # "unknown" when no modality decided
    probabilities: dict[str, float]  # {} when no modality decided
    score: float  # NaN when no modality decided
    threshold: float  # NaN when no modality decided
    is_abnormal: bool
    lead: str = ""  # max_ratio: the modality whose ratio is the score; else ""

    def detection(
        self,
        furnace_id: str,
        window_end: float,
        modalities: tuple[str, ...],
        class_names: tuple[str, ...],
        *,
        health: dict[str, str] | None = None,
        per_modality: dict[str, ModalityResult] | None = None,
        code_agreement: float | None = None,
        model_version: str = "",
    ) -> Detection:
        """This decision as the `Detection` of one furnace's window."""
        return Detection(
            furnace_id=furnace_id,
            window_end=window_end,
            condition=self.condition,
            probabilities=self.probabilities,
            score=self.score,
            threshold=self.threshold,
            is_abnormal=self.is_abnormal,
            modalities=modalities,
            health=health or {},
            per_modality=per_modality or {},
            code_agreement=code_agreement,
            lead=self.lead,
            model_version=model_version,
            class_names=class_names,
        )


def decide(
    results: Mapping[str, ModalityResult],
    used: Sequence[str],
    thresholds: Thresholds,
    class_names: Sequence[str],
) -> Decision:
    """The service's decision rule (module docstring) for one window: the modality results
    (`probs`, `score` = 1 - p(normal)) of the modalities `used` (the usable ones, in
    `service.types.MODALITIES` order) under `thresholds`. The engine calls this for every
    window; `furnace.alert_calibration` calls it to re-decide stored results under candidate
    thresholds, so the rule lives here only.
    """
    if not used:
        nan = float("nan")
        return Decision("unknown", {}, nan, nan, False)
    threshold = thresholds.for_modalities(tuple(used))
    probs = np.mean([results[m].probs for m in used], axis=0)
    score, lead = float(1.0 - probs[0]), ""
    if thresholds.fusion == "max_ratio":
        ratio = {m: results[m].score / max(thresholds.modality(m), RATIO_FLOOR) for m in used}
        lead = max(used, key=lambda m: ratio[m])
        score = float(ratio[lead])
    abnormal = score > threshold
    top = int(probs.argmax())
    if abnormal and top == 0:
        top = 1 + int(probs[1:].argmax())
    elif not abnormal:
        top = 0
    return Decision(
        condition=class_names[top],
        probabilities={n: float(p) for n, p in zip(class_names, probs, strict=True)},
        score=score,
        threshold=threshold,
        is_abnormal=bool(abnormal),
        lead=lead,
    )
