"""The engine's history of shared codes per furnace and modality, for the memory heads
(model/memory.py, docs/service.md "Memory").

A memory graph decides a window from the codes of `slots` windows of the same furnace and
modality: slot 0 is the window itself, slot j the window ending j * stride_windows *
hop_seconds earlier. `CodeHistory` keeps, per (furnace, modality), the codes of every window
the engine produced a result for, keyed by its hop index `round(window_end / hop_seconds)`
(windows match on the hop grid, as training matched them), and pruned to the keys the slots
can reach from the newest one: memory per furnace is bounded.

`gather` is what `Engine.score` calls for one modality's batch: every window's codes go in
first, then each window's slots are read (a window only ever reads keys at or before its
own), then the furnaces touched are pruned, all under one lock (the stream and HTTP inference
pools score at once). A key keeps the first codes stored for it: a window scored again (a
redelivery, the same window posted over HTTP) reads its own codes in slot 0 but does not
rewrite what the detections stream holds for that end, so a history rebuilt from stored
detections after a restart (`prime`) matches the one that was lost.

Codes are meaningful only for the bundle that produced them: the engine owns its history,
and a reloaded engine starts empty (then primes each furnace from the detections its own
model version wrote).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from service.bundle import MemorySpec
from service.histories import FurnaceHistory

Codes = NDArray[np.int64]


class CodeHistory(FurnaceHistory):
    """Per (furnace, modality): hop index -> codes (module docstring). Thread-safe."""

    def __init__(self, spec: MemorySpec, codebook_size: int) -> None:
        super().__init__(spec.hop_seconds)
        self.spec = spec
        self.codebook_size = codebook_size
        self.reach = (spec.slots - 1) * spec.stride_windows  # hops back from the newest key
        self._codes: dict[tuple[str, str], dict[int, Codes]] = {}

    def valid(self, codes: Sequence[int]) -> bool:
        """`codes_per_window` codes, each an index into the codebook."""
        return len(codes) == self.spec.codes_per_window and all(
            0 <= int(c) < self.codebook_size for c in codes
        )

    def gather(
        self, modality: str, windows: Sequence[tuple[str, float, Sequence[int]]]
    ) -> tuple[Codes, NDArray[np.float32]]:
        """Store a batch's codes, then build each window's memory-graph inputs.

        Args:
            modality: the modality of every window in `windows`.
            windows: (furnace id, window end, its codes) per window that has a result.

        Returns:
            codes (B, slots, codes_per_window) int64 (0 where absent) and present (B, slots)
            float32 (slot 0 always 1).
        """
        spec = self.spec
        b = len(windows)
        codes = np.zeros((b, spec.slots, spec.codes_per_window), np.int64)
        present = np.zeros((b, spec.slots), np.float32)
        own = [np.asarray(c, np.int64) for _, _, c in windows]
        keys = [self.key(end) for _, end, _ in windows]
        with self._lock:
            for (furnace_id, _, _), k, c in zip(windows, keys, own, strict=True):
                self._codes.setdefault((furnace_id, modality), {}).setdefault(k, c)
            for i, ((furnace_id, _, _), k) in enumerate(zip(windows, keys, strict=True)):
                codes[i, 0], present[i, 0] = own[i], 1.0
                stored = self._codes[(furnace_id, modality)]
                for j in range(1, spec.slots):
                    found = stored.get(k - j * spec.stride_windows)
                    if found is not None:
                        codes[i, j], present[i, j] = found, 1.0
            for furnace_id in {f for f, _, _ in windows}:
                self._prune(furnace_id, modality)
        return codes, present

    def prime(
        self, furnace_id: str, records: Iterable[tuple[float, Mapping[str, Sequence[int]]]]
    ) -> int:
        """Store a furnace's codes from its stored detections, oldest first ((window end,
        modality -> codes) each; invalid codes are skipped), and mark it primed. A key that
        already holds codes keeps them. Returns how many codes were stored."""
        stored = 0
        with self._lock:
            for end, per_modality in records:
                k = self.key(end)
                for modality, codes in per_modality.items():
                    if not self.valid(codes):
                        continue
                    slots = self._codes.setdefault((furnace_id, modality), {})
                    if k not in slots:
                        slots[k] = np.asarray(codes, np.int64)
                        stored += 1
            for modality in {m for f, m in self._codes if f == furnace_id}:
                self._prune(furnace_id, modality)
            self._primed.add(furnace_id)
        return stored

    def furnaces(self) -> int:
        """How many furnaces hold any history."""
        with self._lock:
            return len({f for f, _ in self._codes})

    def windows(self, furnace_id: str, modality: str) -> list[int]:
        """The hop indices stored for a furnace and modality, ascending (tests, diagnostics)."""
        with self._lock:
            return sorted(self._codes.get((furnace_id, modality), {}))

    def clear(self) -> None:
        """Forget everything (a new independent replay)."""
        with self._lock:
            self._codes.clear()
            self._primed.clear()

    def _prune(self, furnace_id: str, modality: str) -> None:
        """Drop keys the slots of the newest one cannot reach (the caller holds the lock)."""
        slots = self._codes.get((furnace_id, modality))
        if not slots:
            return
        oldest = max(slots) - self.reach
        for k in [k for k in slots if k < oldest]:
            del slots[k]
