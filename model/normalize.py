"""Input standardisation constants of both modalities, exported with the graphs (docs/design/cmg.md
2).

The camera is standardised per channel as docs/design/cmg.md 2 specifies. The current features are
standardised per feature as well [ours]: raw f_c is dominated by the common current level
(about 0.5 +- 0.1 on the / 20 000 scale), which leaves windows nearly indistinguishable
after the post-norm encoder and keeps Cross-CPC at log B for hundreds of steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.features import (
    CameraInput,
    camera_inputs,
    current_features,
    long_context_features,
    rich_current_features,
)

STD_FLOOR = 1e-2  # lower bound of estimated standard deviations
RICH_CLAMP = 10.0  # |standardised feature| bound with rich current features
_ROW = {"current": 0, "camera": 1}


class InputNorm(nn.Module):
    """Buffers camera_mean/_std (3,), current_mean/_std (F_c,) and stats_set (2,) bool.

    Statistics never set explicitly are taken from the first batch seen in training mode,
    ActNorm-style (`autoset`); in eval mode they are only read.
    """

    camera_mean: Tensor
    camera_std: Tensor
    current_mean: Tensor
    current_std: Tensor
    stats_set: Tensor

    def __init__(
        self,
        current_features: int,
        *,
        rich_current: bool = False,
        long_context: bool = False,
        camera_norm: str = "global",
        camera_diff: str = "previous",
        camera_channels: str = "rgb",
    ) -> None:
        super().__init__()
        self.rich_current = rich_current  # append rich_current_features [ours]
        self.long_context = long_context  # baseline (B, 6): append long_context_features [ours]
        self.camera_norm = camera_norm
        self.camera_diff = camera_diff
        self.camera_channels = camera_channels  # "physics": + redness, local contrast [ours]
        self.register_buffer("camera_mean", torch.full((3,), 0.5))  # [0, 1] scale
        self.register_buffer("camera_std", torch.full((3,), 0.5))
        self.register_buffer("current_mean", torch.zeros(current_features))  # (F_c,)
        self.register_buffer("current_std", torch.ones(current_features))
        self.register_buffer("stats_set", torch.zeros(2, dtype=torch.bool))  # current, camera

    def set_camera(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel frame mean and std (3,) on the [0, 1] scale."""
        _copy_stats(self.camera_mean, self.camera_std, mean, std, "camera")
        self.stats_set[1] = True

    def set_current(self, mean: Tensor, std: Tensor) -> None:
        """Mean and std (F_c,) of the current features f_c."""
        _copy_stats(self.current_mean, self.current_std, mean, std, "current")
        self.stats_set[0] = True

    @torch.no_grad()
    def set_from(
        self, x_c: Tensor | None = None, baseline: Tensor | None = None, x_v: Tensor | None = None
    ) -> None:
        """Statistics from a sample of windows.

        Args:
            x_c: (B, T, S, 3) A with baseline (B, 3) A: sets the current statistics.
            x_v: (B, T, H, W, 3) uint8: sets the camera statistics.
        """
        if x_c is not None and baseline is not None:
            f = self.raw_current(x_c, baseline)
            f = f.reshape(-1, f.shape[-1])  # (B*T, F_c)
            self.set_current(f.mean(0), f.std(0).clamp(min=STD_FLOOR))
        if x_v is not None:
            px = x_v.reshape(-1, 3).float() / 255.0  # (B*T*H*W, 3)
            self.set_camera(px.mean(0), px.std(0).clamp(min=STD_FLOOR))

    def autoset(self, modality: str, x: Tensor, baseline: Tensor | None = None) -> None:
        """In training mode, set `modality`'s statistics from x if they were never set."""
        if not self.training or bool(self.stats_set[_ROW[modality]]):
            return
        if modality == "current":
            self.set_from(x_c=x, baseline=baseline)
        else:
            self.set_from(x_v=x)

    def current(self, x_c: Tensor, baseline: Tensor) -> Tensor:
        """Standardised current features.

        Args:
            x_c: (B, T, S, 3) A; baseline: (B, 3) A.

        Returns:
            (B, T, F_c) (f_c - mean) / std.
        """
        self.autoset("current", x_c, baseline)
        f = (self.raw_current(x_c, baseline) - self.current_mean) / self.current_std
        # rare rich features (clip, arc loss) have tiny stds: bound them [ours]
        return f.clamp(-RICH_CLAMP, RICH_CLAMP) if self.rich_current else f

    def raw_current(self, x_c: Tensor, baseline: Tensor) -> Tensor:
        """Unstandardised current features (B, T, F_c), rich and long-context ones appended if
        configured."""
        width = 6 if self.long_context else 3
        if baseline.shape[-1] != width:
            msg = f"this model reads a baseline of {width} columns per window, got "
            msg += f"{tuple(baseline.shape)}"
            raise ValueError(msg)
        f = current_features(x_c, baseline)
        if self.rich_current:
            f = torch.cat([f, rich_current_features(x_c, baseline)], dim=-1)
        if self.long_context:
            f = torch.cat([f, long_context_features(x_c, baseline)], dim=-1)
        return f

    def camera(self, x_v: Tensor) -> CameraInput:
        """Camera input halves (B, T, 3, H, W) standardised with the camera statistics.

        Args:
            x_v: (B, T, H, W, 3) uint8.
        """
        self.autoset("camera", x_v)
        return camera_inputs(
            x_v,
            self.camera_mean,
            self.camera_std,
            norm=self.camera_norm,
            diff_to=self.camera_diff,
            channels=self.camera_channels,
        )


def _copy_stats(mean_buf: Tensor, std_buf: Tensor, mean: Tensor, std: Tensor, name: str) -> None:
    mean, std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
    shape = tuple(mean_buf.shape)
    if mean.shape != shape or std.shape != shape or not bool((std > 0).all()):
        msg = f"{name} mean and std must have shape {shape} with std > 0, got {mean}, {std}"
        raise ValueError(msg)
    mean_buf.copy_(mean)
    std_buf.copy_(std)
