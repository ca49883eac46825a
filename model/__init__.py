"""Pure-PyTorch CMG model: encoders, shared codebook, CLUB, Cross-CPC, heads
(docs/design/cmg.md)."""

from __future__ import annotations

from model.cmg import CMG, CMGOutput, LossBreakdown, build_cmg
from model.codebook import Codebook, Quantized
from model.config import CMGConfig, CodebookConfig, EncoderConfig
from model.features import camera_features, current_features
from model.heads import DetectorHead, HeadOutput, anomaly_score
from model.scorer import ModalityScorer, ScorerOutput

__all__ = [
    "CMG",
    "CMGConfig",
    "CMGOutput",
    "Codebook",
    "CodebookConfig",
    "DetectorHead",
    "EncoderConfig",
    "HeadOutput",
    "LossBreakdown",
    "ModalityScorer",
    "Quantized",
    "ScorerOutput",
    "anomaly_score",
    "build_cmg",
    "camera_features",
    "current_features",
]
