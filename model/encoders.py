"""Semantic encoders Phi_c, Phi_v and specific encoders Psi_c, Psi_v (docs/design/cmg.md section 3).

Deviation from docs/design/cmg.md 3, for CPU speed: the camera stems are slimmed. docs/design/cmg.md
gives 3 x (conv 3x3, stride 2; 6 -> 32 -> 64 -> 64), which alone costs ~0.4 s per training step at
B*T = 512 frames of 64 x 64 on two cores. Here both stems are a 4x4 stride-4 "patchify" conv
followed by a 2x2 stride-2 patch-merge conv (Phi_v: 6 -> 32 -> 64, Psi_v: 6 -> 16 -> 32;
configurable in EncoderConfig). They reach the same frame_px / 8 map (8 x 8 at 64 px) with about a
sixth of the work. Frames stay in channels-last layout (faster on CPU; a no-op for the ONNX graph).

The semantic transformers are post-norm (as the CMG code) and written out here rather than
taken from nn.TransformerEncoderLayer, whose fused inference path does not trace to ONNX
reliably. Unlike the CMG code they add a learned positional embedding (docs/design/cmg.md 5 #10).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import CMGConfig, EncoderConfig
from model.features import CameraInput, hotspot_stats, summary_width


class TransformerLayer(nn.Module):
    """Post-norm transformer encoder layer: x = LN(x + SA(x)); x = LN(x + FF(x))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.scale = 1.0 / math.sqrt(cfg.dim // cfg.heads)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ff = nn.Sequential(nn.Linear(cfg.dim, cfg.ff), nn.ReLU(), nn.Linear(cfg.ff, cfg.dim))
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, T, D). Returns: (B, T, D)."""
        B, T, D = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, T, D/h) each
        att = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, T, T)
        att = self.drop(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        x = self.norm1(x + self.drop(self.proj(y)))
        return self.norm2(x + self.drop(self.ff(x)))


class SemanticTransformer(nn.Module):
    """Linear(F -> D) + learned positional embedding (T, D) + transformer layers."""

    def __init__(self, in_dim: int, segments: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(segments, cfg.dim) * 0.02)  # (T, D)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.layers))

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (B, T, F). Returns: z (B, T, D)."""
        z = self.inp(x) + self.pos[: x.shape[1]]  # (B, T, D)
        for layer in self.layers:
            z = layer(z)
        return z


class CurrentSemanticEncoder(nn.Module):
    """Phi_c: f_c (B, T, F_c) -> z_c (B, T, D)."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        self.body = SemanticTransformer(cfg.current_features, cfg.segments, cfg.encoder)

    def forward(self, f_c: Tensor) -> Tensor:
        """Args: f_c (B, T, F_c). Returns: z_c (B, T, D)."""
        return self.body(f_c)


class CameraStem(nn.Module):
    """Slimmed camera stem: 4x4/4 patchify conv (6 -> c0), then 2x2/2 patch merge (c0 -> c1).

    The first conv is one Conv2d over the six camera channels, applied as the sum of its
    standardised-frame half and its residual half, which equals the conv of the
    concatenation without building it (interleaving 6 channels costs more than the conv).
    With `extra` physics channels (camera_channels "physics" [ours]) the first conv has
    6 + extra input channels and `cam.extra` is convolved with the last ones the same way.
    """

    def __init__(self, channels: tuple[int, int], extra: int = 0) -> None:
        super().__init__()
        c0, c1 = channels
        self.extra = extra
        self.patch = nn.Conv2d(6 + extra, c0, kernel_size=4, stride=4)
        self.merge = nn.Conv2d(c0, c1, kernel_size=2, stride=2)

    def forward(self, cam: CameraInput) -> Tensor:
        """Args: cam with (B, T, 3, H, W) halves (and (B, T, E, H, W) extra when E > 0).
        Returns: (B*T, c1, H/8, W/8)."""
        B, T, C, H, W = cam.standard.shape
        standard = cam.standard.reshape(B * T, C, H, W)  # channels-last view
        diff = cam.diff.reshape(B * T, C, H, W)
        w = self.patch.weight  # (c0, 6 + E, 4, 4)
        y = F.conv2d(standard, w[:, :C], self.patch.bias, stride=4)  # (B*T, c0, H/4, W/4)
        # in place: no conv backward needs its own output, so this is safe for autograd
        y = y.add_(F.conv2d(diff, w[:, C : 2 * C], None, stride=4))
        if self.extra:
            if cam.extra is None:
                msg = "this stem takes physics channels: build the input with channels='physics'"
                raise ValueError(msg)
            extra = cam.extra.reshape(B * T, self.extra, H, W)
            y = y.add_(F.conv2d(extra, w[:, 2 * C :], None, stride=4))
        return F.relu(self.merge(F.relu(y, inplace=True)), inplace=True)


class SEGate(nn.Module):
    """Squeeze-and-excitation channel gate (reduction r), as the CMG video branch."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def gate(self, squeezed: Tensor) -> Tensor:
        """Args: squeezed (N, C) spatial means. Returns: (N, C) gates in (0, 1)."""
        return self.fc(squeezed)

    def forward(self, m: Tensor) -> Tensor:
        """Args: m (N, C, h, w). Returns: (N, C, h, w) channel-gated."""
        return m * self.gate(m.mean(dim=(2, 3)))[:, :, None, None]


class AttentionPool(nn.Module):
    """Spatial attention pooling whose query is the global average of the map.

    The score of position p is key(f_p) . query(mean f) / sqrt(C). With linear key and query
    maps this bilinear form is f_p . (A mean f) for one C x C matrix A (the key bias only adds
    a constant per map, which the softmax ignores), so a single Linear on the mean computes
    it without projecting every position.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, channels)
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, m: Tensor, gate: Tensor | None = None) -> Tensor:
        """Pool the map, optionally channel-gated.

        A per-channel gate g commutes with the pooling: pooling g * m equals g times the
        pooling of m with the query multiplied by g. That saves gating every position.

        Args:
            m: (N, C, h, w) feature map.
            gate: (N, C) channel gate applied to m, or None.

        Returns:
            (N, C) attention-weighted average of the (gated) map over positions.
        """
        flat = m.flatten(2)  # (N, C, h*w)
        mean = flat.mean(dim=-1)  # (N, C)
        if gate is None:
            q = self.query(mean)  # (N, C)
        else:
            q = self.query(gate * mean) * gate  # key side of the gated map folded into q
        scores = (q.unsqueeze(1) @ flat).squeeze(1) * self.scale  # (N, h*w)
        pooled = (flat @ scores.softmax(dim=-1).unsqueeze(-1)).squeeze(-1)  # (N, C)
        return pooled if gate is None else pooled * gate


class CameraSemanticEncoder(nn.Module):
    """Phi_v: camera input -> stem -> SE gate -> attention pool -> transformer -> z_v."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        self.stem = CameraStem(enc.stem_channels, cfg.camera_extra_channels)
        self.gate = SEGate(enc.stem_channels[1], enc.se_reduction)
        self.pool = AttentionPool(enc.stem_channels[1])
        # "attention_max" [ours]: the spatial max of the gated map as well, which a small
        # local hot spot moves far more than it moves any average over the shell
        self.with_max = cfg.camera_pool == "attention_max"
        width = enc.stem_channels[1] * (2 if self.with_max else 1)
        # "hotspot" [ours]: per-segment hot-spot statistics beside the pooled map;
        # "hotspot_relative": only what stands out within the frame (features.hotspot_stats)
        self.with_stats = cfg.camera_summary != "none"
        self.relative_stats = cfg.camera_summary == "hotspot_relative"
        width += summary_width(cfg.camera_summary)
        self.body = SemanticTransformer(width, cfg.segments, enc)

    def forward(self, cam: CameraInput) -> Tensor:
        """Args: cam, camera input halves (B, T, 3, H, W). Returns: z_v (B, T, D)."""
        B, T = cam.standard.shape[:2]
        m = self.stem(cam)  # (B*T, C, H/8, W/8)
        gate = self.gate.gate(m.mean(dim=(2, 3)))  # (B*T, C), SE on the squeezed map
        pooled = self.pool(m, gate)  # (B*T, C) == pool(SE(m)), without gating m
        if self.with_max:  # gates are positive, so max(gate * m) = gate * max(m)
            pooled = torch.cat([pooled, m.amax(dim=(2, 3)) * gate], dim=-1)  # (B*T, 2C)
        pooled = pooled.reshape(B, T, -1)
        if self.with_stats:
            stats = hotspot_stats(cam.pixels, relative=self.relative_stats)  # (B, T, 10 | 8)
            pooled = torch.cat([pooled, stats], dim=-1)
        return self.body(pooled)


class CurrentSpecificEncoder(nn.Module):
    """Psi_c: Linear(F_c -> D) + ReLU -> s_c (B, T, D)."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.current_features, cfg.encoder.dim)

    def forward(self, f_c: Tensor) -> Tensor:
        """Args: f_c (B, T, F_c). Returns: s_c (B, T, D)."""
        return F.relu(self.fc(f_c))


class CameraSpecificEncoder(nn.Module):
    """Psi_v: a separate stem -> m_v map (for the decoder) and pooled MLP -> s_v (for CLUB)."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        enc = cfg.encoder
        self.stem = CameraStem(enc.specific_channels, cfg.camera_extra_channels)
        c = enc.specific_channels[1]
        self.mlp = nn.Sequential(nn.Linear(c, enc.dim), nn.ReLU(), nn.Linear(enc.dim, enc.dim))

    def forward(self, cam: CameraInput) -> tuple[Tensor, Tensor]:
        """Args: cam (B, T, 3, H, W) halves. Returns: m_v (B*T, C, H/8, W/8), s_v (B, T, D)."""
        B, T = cam.standard.shape[:2]
        m_v = self.stem(cam)  # (B*T, C, H/8, W/8)
        s_v = self.mlp(m_v.mean(dim=(2, 3))).reshape(B, T, -1)  # (B, T, D)
        return m_v, s_v
