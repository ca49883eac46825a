"""`Detection`: its stored JSON (`to_dict`) parses back into the same dataclass (`from_dict`,
`store.read_detection`), including records written before `lead` existed."""

from __future__ import annotations

import json
import math

import pytest

from service.detection import Detection, ModalityResult
from service.store import alerting_form, read_detection

NAMES = ("normal", "overheating")


def _decided() -> Detection:
    part = ModalityResult(codes=[3, 1], probs=[0.2, 0.8], score=0.8, segment_scores=[0.1, 0.9])
    return Detection(
        furnace_id="f1",
        window_end=1_700_000_002.0,
        condition="overheating",
        probabilities={"normal": 0.3, "overheating": 0.7},
        score=1.4,
        threshold=1.0,
        is_abnormal=True,
        modalities=("current", "camera"),
        health={"current": "ok", "camera": "ok"},
        per_modality={"current": part, "camera": part},
        code_agreement=1.0,
        lead="camera",
        model_version="m1",
        class_names=NAMES,
    )


def _undecided() -> Detection:
    part = ModalityResult(codes=[3, 1], probs=[0.6, 0.4], score=0.4, segment_scores=[0.1, 0.2])
    return Detection(
        furnace_id="f1",
        window_end=1_700_000_004.0,
        condition="unknown",
        probabilities={},
        score=math.nan,
        threshold=math.nan,
        is_abnormal=False,
        modalities=(),
        health={"current": "stuck", "camera": "missing"},
        per_modality={"current": part},
        model_version="m1",
        class_names=NAMES,
    )


@pytest.mark.parametrize("det", [_decided(), _undecided()])
def test_the_stored_form_parses_back_into_the_same_detection(det: Detection) -> None:
    stored = json.loads(json.dumps({**det.to_dict(), "source": "http"}, allow_nan=False))
    back = Detection.from_dict(stored)
    assert back.to_dict() == det.to_dict()
    assert back.decided_by == det.decided_by and back.class_names == det.class_names
    fields = {b"decided_by": det.decided_by.encode(), b"data": json.dumps(stored).encode()}
    assert read_detection(fields).to_dict() == det.to_dict()


def test_a_record_from_before_lead_parses() -> None:
    old = _decided().to_dict()
    del old["lead"]
    assert Detection.from_dict(old).lead == ""
    with pytest.raises(ValueError, match="invalid detection"):
        Detection.from_dict({"furnace_id": "f1"})


def test_an_undecided_window_decides_nothing_for_alerting() -> None:
    assert _decided().decided and alerting_form(_decided()) == _decided()
    view = alerting_form(_undecided())
    assert not view.decided and view.decided_by == "none" and not view.is_abnormal
