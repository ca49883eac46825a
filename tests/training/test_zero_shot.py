"""Zero-shot transfer on easy simulated data (docs/design/furnace.md 4.2, docs/design/cmg.md 7.6):
a tiny config trains
end to end in under a minute on one thread, and its head, trained on current labels only, names
the conditions on camera windows of unseen furnaces better than chance, through shared codes.

Chance levels: macro-F1 over k scored classes 1/k, the best any guess that ignores the window
achieves in expectation (guessing class c with probability q_c scores F1_c = 2 p_c q_c /
(p_c + q_c), whose sum over c peaks at q = p with value 1); code agreement of paired segments:
sum_k f_current(k) f_camera(k), from each modality's code frequencies. Over 3 data x 3 training
seeds the run scores macro-F1 0.43-0.56 (chance 0.33) and agreement 0.06-0.15 (chance 0.03);
untrained (1 step) it scores macro-F1 0.09-0.22, and with separate codebooks (the ablation) its
agreement stays at chance (docs/results.md, "Zero-shot on easy data").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.config import CLASS_NAMES
from tests.helpers.tiny_run import TRANSFER_CONDITIONS, write_transfer_data, zero_shot_config
from training.data.splits import load_recordings, windows_of
from training.evaluation.evaluate import evaluate
from training.run import load_run, train_run
from training.train_head import encode_all

pytestmark = pytest.mark.heavy

ZERO_SHOT = "zero_shot_current_to_camera"
SOURCE_AUROC = 0.8  # the current head's eruption AUROC: there is something to transfer
F1_MARGIN = 0.05  # zero-shot macro-F1 over its 1/k chance level
AGREEMENT_MARGIN = 0.02  # share of paired segments with equal codes, over its chance level


def code_agreement(run_dir: Path, test_dir: Path) -> tuple[float, float]:
    """(share of paired test segments whose current and camera codes are equal, chance)."""
    cfg, model, _, _ = load_run(run_dir)
    test = windows_of(load_recordings(test_dir), **cfg.train.window_args)
    paired = test.valid_cur & test.valid_cam
    enc = encode_all(model, test.select(paired))
    c, v = enc["current"].codes, enc["camera"].codes  # (W, T*G) each
    k = cfg.cmg.codebook.size
    f_c = np.bincount(c.ravel(), minlength=k) / c.size
    f_v = np.bincount(v.ravel(), minlength=k) / v.size
    return float(np.mean(c == v)), float(f_c @ f_v)


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_transfer_data(tmp_path_factory.mktemp("transfer"))


@pytest.fixture(scope="module")
def transfer_run(
    transfer_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, float]:
    """The tiny run (current labels only) and its wall-clock seconds."""
    run = tmp_path_factory.mktemp("transfer_run")
    t0 = time.perf_counter()
    train_run(transfer_data["train"], run, zero_shot_config(), progress=False)
    return run, time.perf_counter() - t0


@pytest.fixture(scope="module")
def transfer_metrics(
    transfer_run: tuple[Path, float],
    transfer_data: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("transfer_eval")
    return evaluate(transfer_run[0], transfer_data["test"], out, baselines=False, progress=False)


def test_tiny_config_trains_end_to_end_in_under_a_minute(transfer_run: tuple[Path, float]) -> None:
    run, seconds = transfer_run
    _, _, heads, log = load_run(run)
    assert seconds < 60.0
    assert log["config"]["train"]["label_modality"] == "current"
    assert {"current", "camera", "both"} <= set(heads)


def test_zero_shot_current_to_camera_beats_chance(transfer_metrics: dict[str, Any]) -> None:
    settings = transfer_metrics["settings"]
    row = settings[ZERO_SHOT]
    assert row["conditions"] == ["normal", *TRANSFER_CONDITIONS]
    support = np.asarray(row["confusion"]).sum(1)  # (6,) windows per true class
    assert all(support[CLASS_NAMES.index(c)] > 0 for c in row["conditions"])  # k classes present
    # the source head learned the condition (otherwise there is nothing to transfer)
    assert settings["current_only"]["per_class_auroc"]["eruption"] >= SOURCE_AUROC
    # Naming, not ranking: an untrained model often ranks camera eruptions above normal
    # windows too (per-class AUROC up to 0.97: they are extreme in any features), but it
    # cannot name them with a head trained on the other modality.
    assert row["macro_f1"] >= 1.0 / len(row["conditions"]) + F1_MARGIN


def test_paired_segments_share_codes(
    transfer_run: tuple[Path, float], transfer_data: dict[str, Path]
) -> None:
    # What makes the transfer CMG's: the same furnace-time gets the same code in both
    # modalities. With separate codebooks (InfoNCE still aligns the embeddings, so the head
    # can transfer through the vectors) this stays at chance.
    agreement, chance = code_agreement(transfer_run[0], transfer_data["test"])
    assert agreement >= chance + AGREEMENT_MARGIN
