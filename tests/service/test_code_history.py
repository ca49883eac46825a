"""The memory heads' code history (service/memory.py): slots on the hop grid, the present
mask, batch order, pruning, first-stored-wins and priming from stored detections."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.bundle import GraphSpec, MemorySpec
from service.memory import CodeHistory

HOP = 2.0
SLOTS, STRIDE, WIDTH, K = 4, 3, 6, 16  # reach: 3 slots x 3 hops = 9 hops back
T0 = 1_700_000_000.0


def history(slots: int = SLOTS, stride: int = STRIDE) -> CodeHistory:
    graph = GraphSpec("memory.onnx", (), ())
    spec = MemorySpec(slots, stride, HOP, WIDTH, {"current": graph, "camera": graph}, {})
    return CodeHistory(spec, K)


def codes_of(hop: int, salt: int = 0) -> list[int]:
    """Distinct, valid codes per window (hop index) and salt."""
    return [(hop * 7 + salt * 3 + i) % K for i in range(WIDTH)]


def end(hop: int, jitter: float = 0.0) -> float:
    return T0 + hop * HOP + jitter


def test_slot_zero_is_the_window_and_slot_j_the_window_j_strides_before() -> None:
    h = history()
    for k in range(0, 10):  # every hop of 20 s, one window at a time
        h.gather("current", [("f", end(k), codes_of(k))])
    codes, present = h.gather("current", [("f", end(10), codes_of(10))])
    assert codes.shape == (1, SLOTS, WIDTH) and codes.dtype == np.int64
    assert present.shape == (1, SLOTS) and present.dtype == np.float32
    assert present[0].tolist() == [1.0, 1.0, 1.0, 1.0]
    for j in range(SLOTS):
        assert codes[0, j].tolist() == codes_of(10 - j * STRIDE), j


def test_absent_windows_are_zero_codes_and_not_present() -> None:
    h = history()
    h.gather("current", [("f", end(4), codes_of(4))])  # slot 2 of the window at hop 10
    codes, present = h.gather("current", [("f", end(10), codes_of(10))])
    assert present[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert codes[0, 1].tolist() == [0] * WIDTH and codes[0, 3].tolist() == [0] * WIDTH
    assert codes[0, 2].tolist() == codes_of(4)
    # the first window of a furnace has only itself
    codes, present = history().gather("camera", [("g", end(0), codes_of(0))])
    assert present[0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_windows_match_on_the_hop_grid() -> None:
    """Ends off the grid (HTTP windows, clock jitter) match the nearest hop index."""
    h = history()
    h.gather("current", [("f", end(7, jitter=0.4), codes_of(7))])
    codes, present = h.gather("current", [("f", end(10, jitter=-0.3), codes_of(10))])
    assert present[0, 1] == 1.0
    assert codes[0, 1].tolist() == codes_of(7)
    assert h.windows("f", "current") == [h.key(end(7)), h.key(end(10))]


def test_furnaces_and_modalities_keep_their_own_history() -> None:
    h = history()
    h.gather("current", [("f", end(7), codes_of(7))])
    _, present = h.gather("camera", [("f", end(10), codes_of(10))])
    assert present[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    _, present = h.gather("current", [("g", end(10), codes_of(10))])
    assert present[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    _, present = h.gather("current", [("f", end(10), codes_of(10))])
    assert present[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert h.furnaces() == 2


def test_a_batch_is_stored_first_and_each_window_reads_only_its_past() -> None:
    """A batch with several windows of one furnace, in any order, gives what scoring them
    one at a time in window order gives."""
    hops = list(range(0, 40))
    one_by_one = history()
    expected = {
        k: one_by_one.gather("current", [("f", end(k), codes_of(k))]) for k in hops
    }  # (codes (1, M, W), present (1, M)) per window
    batch = [("f", end(k), codes_of(k)) for k in reversed(hops)]  # newest first
    codes, present = history().gather("current", batch)
    for i, k in enumerate(reversed(hops)):
        assert codes[i].tolist() == expected[k][0][0].tolist(), k
        assert present[i].tolist() == expected[k][1][0].tolist(), k
    # a window never reads a later one: the oldest window of the batch has only itself
    assert present[-1].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_history_is_pruned_to_what_the_slots_reach_from_the_newest_window() -> None:
    h = history()
    reach = (SLOTS - 1) * STRIDE
    for k in range(100):
        h.gather("current", [("f", end(k), codes_of(k))])
        kept = h.windows("f", "current")
        assert len(kept) <= reach + 1
        assert kept[0] >= kept[-1] - reach
    # an old window scored late (an HTTP archive) reads what is kept, then is pruned away
    codes, present = h.gather("current", [("f", end(10), codes_of(10))])
    assert present[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert h.key(end(10)) not in h.windows("f", "current")


def test_a_key_keeps_the_first_codes_stored_but_the_window_reads_its_own() -> None:
    h = history()
    h.gather("current", [("f", end(7), codes_of(7))])
    codes, _ = h.gather("current", [("f", end(7), codes_of(7, salt=1))])  # scored again
    assert codes[0, 0].tolist() == codes_of(7, salt=1)  # slot 0: the window's own codes
    codes, _ = h.gather("current", [("f", end(10), codes_of(10))])
    assert codes[0, 1].tolist() == codes_of(7)  # the history keeps the first


def test_priming_from_stored_detections_rebuilds_the_same_history() -> None:
    """Codes stored per detection (oldest first), fed to `prime` after a restart, give every
    later window the slots an uninterrupted history gives; codes of the wrong length or out
    of the codebook are skipped."""
    live = history()
    stored = []
    for k in range(30):
        per = {"current": codes_of(k), "camera": codes_of(k, salt=2)}
        if k % 5 == 0:
            del per["camera"]  # no camera result for that window: nothing stored
        for m, c in per.items():
            live.gather(m, [("f", end(k), c)])
        stored.append((end(k), per))
    restarted = history()
    assert not restarted.primed("f")
    bad = [(end(31), {"current": [1, 2]}), (end(32), {"camera": [K] * WIDTH})]
    restarted.prime("f", [*stored, *bad])
    assert restarted.primed("f")
    for m in ("current", "camera"):
        assert restarted.windows("f", m) == live.windows("f", m)
    for k in range(30, 45):
        for m in ("current", "camera"):
            a = live.gather(m, [("f", end(k), codes_of(k, salt=4))])
            b = restarted.gather(m, [("f", end(k), codes_of(k, salt=4))])
            assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist(), (k, m)


def test_priming_keeps_codes_already_held_and_reprime_clear_forget() -> None:
    h = history()
    h.gather("current", [("f", end(7), codes_of(7))])
    assert h.prime("f", [(end(7), {"current": codes_of(7, salt=1)})]) == 0
    assert h.prime("f", [(end(4), {"current": codes_of(4)})]) == 1
    codes, present = h.gather("current", [("f", end(10), codes_of(10))])
    assert codes[0, 1].tolist() == codes_of(7) and codes[0, 2].tolist() == codes_of(4)
    h.reprime("f")
    assert not h.primed("f") and h.windows("f", "current")
    h.mark_primed("f")
    h.clear()
    assert not h.primed("f") and h.windows("f", "current") == [] and h.furnaces() == 0


def test_concurrent_batches_store_every_window() -> None:
    """The stream and HTTP inference pools gather at once (one lock)."""
    h = history(slots=64, stride=1)

    def work(furnace_id: str) -> None:
        for k in range(60):
            h.gather("current", [(furnace_id, end(k), codes_of(k))])

    threads = [threading.Thread(target=work, args=(f"f{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert len(h.windows(f"f{i}", "current")) == 60
    _, present = h.gather("current", [("f0", end(60), codes_of(60))])
    assert present[0].sum() == 61  # itself and the 60 before it


@pytest.mark.parametrize("slots", [1, 2])
def test_tiny_memories(slots: int) -> None:
    h = history(slots=slots, stride=1)
    for k in range(5):
        codes, present = h.gather("current", [("f", end(k), codes_of(k))])
    assert codes.shape == (1, slots, WIDTH)
    assert present[0].tolist() == [1.0] * slots
    assert len(h.windows("f", "current")) == slots
