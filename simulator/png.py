"""A minimal PNG encoder (numpy + zlib) for the replayer's camera frames.

Writes 8-bit RGB, no interlace, filter type 0 (None) on every row, one IDAT chunk: the
smallest subset of the PNG specification (W3C, "Portable Network Graphics (PNG)
Specification", sections 5 and 11) that any decoder reads. The simulator may not import an
image library (docs/design/architecture.md "Layout"), and frames are only 64 x 64, so compression
ratio matters less than having no dependency.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from numpy.typing import NDArray

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BIT_DEPTH = 8
_COLOUR_TYPE_RGB = 2
_MAX_SIDE = 2**31 - 1  # PNG stores width and height as 4-byte unsigned, at most 2^31 - 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One chunk: length, type, data, CRC-32 over type and data (PNG spec 5.3)."""
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(image: NDArray[np.uint8], *, level: int = 6) -> bytes:
    """Encode one RGB frame as PNG bytes.

    Args:
        image: (H, W, 3) uint8 RGB pixels, row-major, top row first.
        level: zlib compression level, 0 (store) to 9 (smallest).

    Returns:
        A complete PNG file: signature, IHDR, IDAT, IEND.

    Raises:
        ValueError: the array is not (H, W, 3) uint8 with H, W >= 1, or `level` is not 0-9.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        msg = f"encode_png wants an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}"
        raise ValueError(msg)
    height, width = int(image.shape[0]), int(image.shape[1])
    if not (1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        msg = f"PNG sides must be 1..{_MAX_SIDE} pixels, got {height} x {width}"
        raise ValueError(msg)
    if not 0 <= level <= 9:
        msg = f"zlib level must be 0..9, got {level}"
        raise ValueError(msg)
    # Each scanline is one filter-type byte (0: None) followed by the row's RGB bytes.
    rows = np.ascontiguousarray(image).reshape(height, width * 3)  # (H, W*3)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # (H, 1 + W*3)
    ihdr = struct.pack(">IIBBBBB", width, height, _BIT_DEPTH, _COLOUR_TYPE_RGB, 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)),
            _chunk(b"IEND", b""),
        )
    )
