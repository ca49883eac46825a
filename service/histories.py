"""What the engine's per-furnace histories share (service/memory.py `CodeHistory`, the memory
heads' codes; service/adaptation.py `ScoreHistory`, per-furnace adaptation's raw scores): a
lock, the hop-grid key of a window, and which furnaces have been rebuilt ("primed") from
their stored detections since the engine started or a replica adopted them."""

from __future__ import annotations

import threading


class FurnaceHistory:
    """A lock, the hop grid and the primed furnaces; subclasses hold the data under the lock."""

    def __init__(self, hop_seconds: float) -> None:
        self.hop_seconds = hop_seconds
        self._lock = threading.Lock()
        self._primed: set[str] = set()

    def key(self, window_end: float) -> int:
        """The window's index on the hop grid."""
        return round(window_end / self.hop_seconds)

    def primed(self, furnace_id: str) -> bool:
        """Whether the furnace was primed (successfully or not: see the engine)."""
        with self._lock:
            return furnace_id in self._primed

    def mark_primed(self, furnace_id: str) -> None:
        with self._lock:
            self._primed.add(furnace_id)

    def reprime(self, furnace_id: str) -> None:
        """Prime the furnace again before its next window (a replica adopting it: another one
        may have scored it meanwhile); what is held stays, stored values fill the gaps."""
        with self._lock:
            self._primed.discard(furnace_id)
