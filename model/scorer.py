"""Per-modality inference graph: raw window -> codes -> head -> score (docs/design/cmg.md 4,
"Inference").

This is what the ONNX export wraps, one graph per modality. The nearest-code lookup is
written as explicit squared distances + argmin (no cdist) so that it exports at opset 17;
the codebook and the input standardisation constants become constants of the graph.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from torch import Tensor, nn

from model._util import check_modality, sq_distances
from model.cmg import CMG, build_cmg
from model.heads import DetectorHead, anomaly_score

__all__ = ["ModalityScorer", "ScorerOutput", "build_cmg"]


class ScorerOutput(NamedTuple):
    """One modality's detection for a batch of windows."""

    codes: Tensor  # (B, T) int64; (B, T*G) segment-major with code_groups G
    quantized: Tensor  # (B, T, D) code vectors E[codes]
    probs: Tensor  # (B, n_classes)
    score: Tensor  # (B,) 1 - p(normal)
    segment_scores: Tensor  # (B, T) per-segment anomaly scores (explanation)


class ModalityScorer(nn.Module):
    """Frozen encoder + codebook + head of ONE modality; always behaves as in eval mode.

    A snapshot: the encoder, head, codebook and input statistics are copied with
    `requires_grad=False`, so building a scorer never changes `cmg` or `head` (not even
    their train/eval mode), and later training of those is not reflected. Build it when
    exporting. Both modalities' scorers copy the same codebook, byte for byte.
    """

    codebook: Tensor

    def __init__(self, cmg: CMG, head: DetectorHead, modality: str) -> None:
        super().__init__()
        self.modality = check_modality(modality)
        self.encoder = copy.deepcopy(cmg.phi_c if modality == "current" else cmg.phi_v)
        self.head = copy.deepcopy(head)
        self.inputs = copy.deepcopy(cmg.inputs)  # standardisation constants (eval: read only)
        self.register_buffer("codebook", cmg.codebook_for(modality).detach().clone())  # (K, D/G)
        self.groups = cmg.cfg.code_groups  # product quantisation [ours]; 1 = one code per segment
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> ModalityScorer:  # noqa: ARG002 - always frozen
        """Keep eval behaviour (no dropout) whatever `mode` is."""
        return super().train(False)

    def forward(self, x: Tensor, baseline: Tensor | None = None) -> ScorerOutput:
        """Score windows of this scorer's modality.

        Args:
            x: current (B, T, S, 3) float32 A, or camera (B, T, H, W, 3) uint8.
            baseline: (B, 3) A per-phase baseline; current only.

        Returns:
            ScorerOutput(codes, quantized, probs, score, segment_scores).
        """
        if self.modality == "current":
            if baseline is None:
                msg = "the current scorer needs `baseline` (B, 3) in A"
                raise ValueError(msg)
            z = self.encoder(self.inputs.current(x, baseline))  # (B, T, D)
        else:
            z = self.encoder(self.inputs.camera(x))  # (B, T, D)
        T, D = z.shape[1], z.shape[2]
        if self.groups > 1:  # batch stays -1 so that it is a dynamic ONNX axis
            z = z.reshape(-1, T * self.groups, D // self.groups)  # (B, T*G, D/G)
        d = sq_distances(z, self.codebook)  # (B, T*G, K)
        codes = d.argmin(dim=-1)  # (B, T*G) int64, segment-major
        quantized = self.codebook[codes].reshape(-1, T, D)  # (B, T, D)
        head = self.head(quantized)
        probs = head.logits.softmax(dim=-1)  # (B, n_classes)
        return ScorerOutput(codes, quantized, probs, anomaly_score(probs), head.segment_scores)
