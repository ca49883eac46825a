"""Small helpers shared by several `model/` modules (written once, docs/design/style.md 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

MODALITIES = ("current", "camera")


def check_modality(modality: str) -> str:
    """Return `modality` if it is "current" or "camera", else raise ValueError."""
    if modality not in MODALITIES:
        msg = f"modality must be one of {MODALITIES}, got {modality!r}"
        raise ValueError(msg)
    return modality


def sq_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """Squared Euclidean distances, written with matmuls only so that it exports to ONNX.

    Args:
        z: (..., D) vectors.
        codebook: (K, D) code vectors.

    Returns:
        (..., K) squared distances ||z||^2 - 2 z.E + ||E||^2 (may be slightly negative).
    """
    return z.pow(2).sum(-1, keepdim=True) - 2.0 * (z @ codebook.T) + codebook.pow(2).sum(-1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Use `module` without building gradients for its parameters (restored afterwards).

    The CLUB bound uses the q-nets as fixed functions: gradients reach its inputs only
    (docs/design/cmg.md 4.6, "Q frozen in this use").
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
