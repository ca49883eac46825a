"""Reconstruction decoders Dec_c and Dec_v (docs/design/cmg.md 3 and 4.8), and the code-only hotness
decoder of code_target "hotness" [ours]; training only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import CMGConfig
from model.features import HOTNESS_CHANNELS, HOTSPOT_CHANNELS

HOTNESS_HIDDEN = 256  # hidden width of the hotness decoder


class CurrentDecoder(nn.Module):
    """Dec_c: [Linear(D -> D)(q_c) || s_c] -> Linear(2D -> F_c) -> f_c_hat."""

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        D = cfg.encoder.dim
        self.proj = nn.Linear(D, D)
        self.out = nn.Linear(2 * D, cfg.current_features)

    def forward(self, q_c: Tensor, s_c: Tensor) -> Tensor:
        """Args: q_c (B, T, D) code, s_c (B, T, D) specific. Returns: (B, T, F_c)."""
        return self.out(torch.cat([self.proj(q_c), s_c], dim=-1))


class CameraDecoder(nn.Module):
    """Dec_v: Linear(D -> D)(q_v) tiled to the map || m_v -> transposed convs -> frame.

    Each transposed conv (kernel 2, stride 2: a per-pixel linear map to a 2 x 2 block, half the
    cost of kernel 4 on CPU) doubles the side, from frame_px / 8 up to recon_px (two layers
    for 64 -> 32 px, three for a 64 px target). Because the first one maps each input pixel
    to its own 2 x 2 block, its response to the tiled code is one 2 x 2 block per segment,
    tiled; it is computed that way, which equals the conv of the concatenation.
    """

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        D, hidden = cfg.encoder.dim, cfg.encoder.decoder_channels
        self.proj = nn.Linear(D, D)
        n_up = (cfg.recon_px // cfg.map_px).bit_length() - 1  # log2(recon_px / map_px) >= 1
        widths = [D + cfg.encoder.specific_channels[1]] + [hidden] * (n_up - 1) + [3]
        self.first = nn.ConvTranspose2d(widths[0], widths[1], kernel_size=2, stride=2)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[1:-1], widths[2:], strict=True):
            layers += [nn.ReLU(inplace=True), nn.ConvTranspose2d(c_in, c_out, 2, stride=2)]
        self.rest = nn.Sequential(*layers)

    def forward(self, q_v: Tensor, m_v: Tensor) -> Tensor:
        """Reconstruct each segment's frame.

        Args:
            q_v: (B, T, D) camera code.
            m_v: (B*T, C, h, w) specific map from Psi_v, h = w = frame_px / 8.

        Returns:
            (B*T, 3, recon_px, recon_px) frames on the [0, 1] scale (unbounded output).
        """
        B, T, D = q_v.shape
        h, w = m_v.shape[-2:]
        u = self.proj(q_v).reshape(B * T, D)  # (B*T, D), the code half of the first input
        weight = self.first.weight  # (D + C, c1, 2, 2)
        block = torch.einsum("nd,dcab->ncab", u, weight[:D])  # (B*T, c1, 2, 2)
        block = block + self.first.bias.view(1, -1, 1, 1)  # type: ignore[union-attr]
        y = F.conv_transpose2d(m_v, weight[D:], None, stride=2)  # (B*T, c1, 2h, 2w)
        c1 = y.shape[1]
        # add the code response to every 2 x 2 block: view (.., i, a, j, b) at (2i+a, 2j+b);
        # in place is safe, the transposed conv's backward does not need its output
        y.view(B * T, c1, h, 2, w, 2).add_(block.view(B * T, c1, 1, 2, 1, 2))
        return self.rest(y)

    def reference(self, q_v: Tensor, m_v: Tensor) -> Tensor:
        """The same output through the first conv on the explicit concatenation (for tests)."""
        B, T, D = q_v.shape
        h, w = m_v.shape[-2:]
        tiled = self.proj(q_v).reshape(B * T, D, 1, 1).expand(-1, -1, h, w)  # (B*T, D, h, w)
        return self.rest(self.first(torch.cat([tiled, m_v], dim=1)))


class HotnessDecoder(nn.Module):
    """Dec_h [ours]: q_v alone -> Linear(D, 256) + ReLU -> Linear -> (C, px, px) map.

    No specific features reach it, so whatever it reconstructs (features.hotness_target,
    C = 3, or features.hotspot_target, C = 2) must be carried by the camera codes.
    """

    def __init__(self, cfg: CMGConfig) -> None:
        super().__init__()
        self.px = cfg.hotness_px
        self.channels = HOTSPOT_CHANNELS if cfg.code_target == "hotspot" else HOTNESS_CHANNELS
        self.mlp = nn.Sequential(
            nn.Linear(cfg.encoder.dim, HOTNESS_HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HOTNESS_HIDDEN, self.channels * self.px * self.px),
        )

    def forward(self, q_v: Tensor) -> Tensor:
        """Args: q_v (B, T, D) camera code. Returns: (B*T, C, px, px) map."""
        B, T, D = q_v.shape
        return self.mlp(q_v.reshape(B * T, D)).reshape(B * T, self.channels, self.px, self.px)
