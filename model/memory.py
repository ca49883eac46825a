"""Memory head: a furnace's recent history of shared codes -> per-condition probabilities [ours].

The window head (model/heads.py) decides from one 16-s window. Slow build-ups, mist that hides
a hot spot for a while and exhaust bursts a few per minute need minutes of context. The memory
head reads the codes of the window being decided and of up to `slots - 1` earlier windows of
the same furnace and modality, `stride` windows apart (default 16 slots x 8 windows x 2 s: the
last 4 minutes in non-overlapping 16-s windows):

    codes (B, M, T*G) -> codebook vectors (B, M, T, D) -> Linear + ReLU per segment
    -> mean | max over T -> Linear + ReLU = one vector r_j per window (B, M, R)
    -> [r_0 | masked mean of r_0..r_1 | masked mean over M | masked max over M]
    -> Linear + ReLU -> Linear = a correction (B, C)
    logits = log p_window + correction

It is a correction of the window head: `window_probs` are the modality's window-head
probabilities of the decided window (the window graph's `probs`, itself a function of that
window's codes), and the correction's last layer starts at zero, so an untrained memory head
decides exactly as the window head does and training only adds what the history says. (A
memory head that decided from the codes alone was measured first: it raised validation
macro-F1 as much but lost fast events such as eruptions at their onset, where the history is
still normal: docs/results.md, "Memory over the shared codes".)

It reads only code indices of the ONE shared codebook, so it is modality-agnostic by
construction (a head trained on one sensor's history can read the other's: zero-shot), and a
service can rebuild a furnace's history from stored detections, which carry the codes.
`present` masks windows that do not exist (the furnace's first minutes, a sensor fault, a
restart); slot 0, the window being decided, must be present.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import anomaly_score

NEAR_SLOTS = 2  # slots 0..1: the window and the one before it
_NEG = -1e4  # fills absent slots before the max (finite: ONNX-friendly)
PROB_FLOOR = 1e-6  # window probabilities are floored before the log


class MemoryHead(nn.Module):
    """History of shared codes -> logits (module docstring). The codebook is a frozen copy."""

    codebook: Tensor

    def __init__(
        self,
        codebook: Tensor,
        *,
        segments: int,
        codes_per_window: int,
        slots: int,
        n_classes: int = 6,
        hidden: int = 64,
    ) -> None:
        """Args:
        codebook: (K, d) the shared codebook; a segment's vector is its G codes' vectors
            concatenated (product quantisation), D = G * d.
        segments: T, segments per window.
        codes_per_window: T * G, codes per window (segment-major).
        slots: M, windows of history read (slot 0 = the window being decided).
        n_classes: C.
        hidden: H = R, the per-segment and per-window widths.
        """
        super().__init__()
        if slots < 1 or segments < 1 or codes_per_window % segments:
            msg = f"need slots >= 1 and T*G codes per window, got {slots} slots, "
            msg += f"{segments} segments, {codes_per_window} codes per window"
            raise ValueError(msg)
        self.register_buffer("codebook", codebook.detach().clone().float())
        self.segments = segments
        self.codes_per_window = codes_per_window
        self.slots = slots
        self.n_classes = n_classes
        self.dim = codes_per_window // segments * int(codebook.shape[1])  # D
        self.segment = nn.Linear(self.dim, hidden)
        self.window = nn.Linear(2 * hidden, hidden)
        last = nn.Linear(hidden, n_classes)
        nn.init.zeros_(last.weight)  # start as the window head
        nn.init.zeros_(last.bias)
        self.out = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), last)

    def forward(self, codes: Tensor, present: Tensor, window_probs: Tensor) -> Tensor:
        """Args: codes (B, M, T*G) int64 (any value where absent), present (B, M) 0/1 float,
        window_probs (B, C) the window head's probabilities of slot 0's window.

        Returns:
            (B, C) logits.
        """
        b, m, _ = codes.shape
        k = self.codebook.shape[0]
        v = self.codebook[codes.clamp(0, k - 1)].reshape(b, m, self.segments, self.dim)
        h = F.relu(self.segment(v))  # (B, M, T, H)
        r = F.relu(self.window(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=-1)))  # (B, M, R)
        p = present.unsqueeze(-1)  # (B, M, 1)
        rp = r * p
        mean = rp.sum(dim=1) / p.sum(dim=1).clamp(min=1.0)
        near = rp[:, :NEAR_SLOTS].sum(dim=1) / p[:, :NEAR_SLOTS].sum(dim=1).clamp(min=1.0)
        top = (rp + _NEG * (1.0 - p)).amax(dim=1)
        correction = self.out(torch.cat([r[:, 0], near, mean, top], dim=-1))
        return torch.log(window_probs.clamp(min=PROB_FLOOR)) + correction


class MemoryScorer(nn.Module):
    """What the export wraps: (codes, present, window_probs) -> (probs, score = 1 - p(normal)).
    Frozen."""

    def __init__(self, head: MemoryHead) -> None:
        super().__init__()
        self.head = head
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> MemoryScorer:  # noqa: ARG002 - always frozen
        """Keep eval behaviour whatever `mode` is."""
        return super().train(False)

    def forward(
        self, codes: Tensor, present: Tensor, window_probs: Tensor
    ) -> tuple[Tensor, Tensor]:
        probs = self.head(codes, present, window_probs).softmax(dim=-1)
        return probs, anomaly_score(probs)
