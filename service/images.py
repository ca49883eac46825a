"""Camera frames from bytes: PNG or JPEG of any size to an RGB uint8 (frame_px, frame_px, 3) array.

docs/design/serving.md 5.2: the decoded size is checked from the header before any pixel is decoded
(decompression bombs), the frame is resized to the manifest size, and anything else is
rejected with an `ImageError` whose message says what is wrong (the caller counts it as
`reason="decode"` or `"too_large"` and dead-letters stream entries, docs/design/serving.md 1.4).

Resizing: a frame already at (frame_px, frame_px) is returned pixel for pixel (the simulator's
64x64 PNGs decode exactly). Integer downscale factors use the block mean (area averaging,
rounded half to even), the arithmetic of `training.data.fmf._resize`, so service and training agree
bit for bit there. Other downscales use Pillow's BOX filter (area averaging, antialiased),
upscales Pillow's BILINEAR filter. Width and height are scaled independently, as in training:
the aspect ratio is not kept. EXIF orientation is ignored (pixels are used as stored), alpha
is dropped, grayscale and palette images are expanded to RGB, 16-bit grey keeps its high byte.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zlib
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
DEFAULT_MAX_PIXELS: Final = 4096 * 4096  # 16.8 MP
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024
_WIDE_GREY_MODES: Final = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageError(ValueError):
    """Image bytes that cannot become a frame (not PNG/JPEG, corrupt, too large, bad base64)."""

    def __init__(self, message: str, *, reason: str = "decode") -> None:
        super().__init__(message)
        # "decode" or "too_large": the metrics label (docs/design/serving.md 4.1)
        self.reason = reason


def image_format(data: bytes) -> str:
    """The format named by the magic bytes: "PNG" or "JPEG".

    Args:
        data: the first bytes of the image (or all of it).

    Returns:
        "PNG" or "JPEG".

    Raises:
        ImageError: for anything else, quoting the first bytes in hex.
    """
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    if not data:
        msg = "empty image: expected PNG or JPEG bytes"
        raise ImageError(msg)
    msg = f"not a PNG or JPEG (first bytes 0x{data[:8].hex()})"
    raise ImageError(msg)


def decode_image(
    data: bytes,
    *,
    frame_px: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> NDArray[np.uint8]:
    """Decode PNG or JPEG bytes into one model frame.

    Args:
        data: the encoded image.
        frame_px: output side length (the manifest's frame size).
        max_pixels: largest width x height accepted, checked from the header before decoding.
        max_bytes: largest encoded size accepted.

    Returns:
        (frame_px, frame_px, 3) uint8 RGB, C-contiguous and writable.

    Raises:
        ImageError: for an empty, oversized, unknown, corrupt or truncated image
            (`reason` "too_large" for the size limits, "decode" otherwise).
    """
    if frame_px < 1:
        msg = f"frame_px must be >= 1, got {frame_px}"
        raise ValueError(msg)
    img, fmt = _open(data, max_pixels=max_pixels, max_bytes=max_bytes)
    with img:
        width, height = img.size
        try:
            rgb = _to_rgb(img)
        except Exception as exc:  # truncated data, bad CRC, bad Huffman table, ...
            msg = f"corrupt {fmt} data ({width}x{height}): {_clean(exc)}"
            raise ImageError(msg) from exc
    if fmt == "PNG":
        _check_png_complete(data, width, height)
    return resize_frame(rgb, frame_px)


def image_size(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[int, int]:
    """(width, height) from the header alone (no pixel is decoded), with the same checks as
    `decode_image`'s first step: a request's pixel budget is checked with it before any
    frame is decoded.

    Raises:
        ImageError: not PNG/JPEG, a corrupt header, or over `max_pixels` / `max_bytes`.
    """
    img, _ = _open(data, max_pixels=max_pixels, max_bytes=max_bytes)
    with img:
        width, height = img.size
    return width, height


def base64_image_bytes(text: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Strict base64 (RFC 4648 alphabet, padded, no whitespace) to image bytes.

    Raises:
        ImageError: a data URL, too long, characters outside the alphabet or bad padding.
    """
    if text.startswith("data:"):
        msg = "expected plain base64, got a data URL: drop the 'data:...;base64,' prefix"
        raise ImageError(msg)
    if len(text) > 4 * (max_bytes // 3 + 1):
        msg = f"base64 image of {len(text)} characters exceeds the {max_bytes} byte limit"
        raise ImageError(msg, reason="too_large")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        msg = f"invalid base64 image ({len(text)} characters): {_clean(exc)}"
        raise ImageError(msg) from exc


def _open(data: bytes, *, max_pixels: int, max_bytes: int) -> tuple[Image.Image, str]:
    """The lazily opened image (header read, no pixels) and its format, size checked."""
    if len(data) > max_bytes:
        msg = f"image of {len(data)} bytes exceeds the {max_bytes} byte limit"
        raise ImageError(msg, reason="too_large")
    fmt = image_format(bytes(data[:8]))
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])  # lazy: reads the header only
    except Image.DecompressionBombError as exc:  # far above any sane limit: Pillow refuses
        size = _declared_size(data, fmt)
        shown = f"image {size[0]}x{size[1]}" if size else "image"
        msg = f"{shown} exceeds the {max_pixels / 1e6:.1f} MP limit (decompression bomb)"
        raise ImageError(msg, reason="too_large") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ... on junk
        msg = f"corrupt {fmt} header: {_clean(exc)}"
        raise ImageError(msg) from exc
    width, height = img.size
    problem = None
    if width < 1 or height < 1:
        problem = ImageError(f"{fmt} image has an empty size {width}x{height}")
    elif width * height > max_pixels:
        msg = f"image {width}x{height} exceeds the {max_pixels / 1e6:.1f} MP limit "
        msg += f"({max_pixels} pixels)"
        problem = ImageError(msg, reason="too_large")
    if problem is not None:
        img.close()
        raise problem
    return img, fmt


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _clean(exc: BaseException) -> str:
    """An exception's message without object reprs (Pillow quotes `<_io.BytesIO object at
    0x...>`, which tells a client nothing and leaks addresses)."""
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    return text or type(exc).__name__


_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (x offset, y offset, x step, y step)
_ADAM7: Final = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def _check_png_complete(data: bytes, width: int, height: int) -> None:
    """Refuse a PNG whose image data ends before its last row. Pillow fills missing rows
    with zeros when the zlib stream ends early (a header of 4096x4096 with 10 rows of data
    decodes "fine"), so the inflated size is compared with what the header promises.

    Raises:
        ImageError: fewer bytes of image data than width x height needs.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return  # Pillow decoded it; nothing to check against
    depth, colour, interlace = data[24], data[25], data[28]
    channels = _PNG_CHANNELS.get(colour)
    if channels is None:
        return
    bits = depth * channels
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    need = 0
    for xo, yo, xs, ys in passes:
        cols = (width - xo + xs - 1) // xs if width > xo else 0
        rows = (height - yo + ys - 1) // ys if height > yo else 0
        if cols and rows:
            need += rows * (1 + (cols * bits + 7) // 8)  # a filter byte per row
    inflater = zlib.decompressobj()
    got, pos = 0, 8
    try:
        while pos + 8 <= len(data) and got < need:
            length = int.from_bytes(data[pos : pos + 4])
            kind = data[pos + 4 : pos + 8]
            if kind == b"IDAT":
                chunk = data[pos + 8 : pos + 8 + length]
                while chunk and got < need:
                    got += len(inflater.decompress(chunk, 1 << 20))
                    chunk = inflater.unconsumed_tail
            pos += 12 + length
    except zlib.error as exc:
        msg = f"corrupt PNG data ({width}x{height}): {exc}"
        raise ImageError(msg) from exc
    if got < need:
        rows = got * height // max(need, 1)
        msg = f"truncated PNG: the header says {width}x{height} but the data holds about "
        msg += f"{rows} rows"
        raise ImageError(msg)


def decode_base64_image(
    text: str,
    *,
    frame_px: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> NDArray[np.uint8]:
    """Decode a strict base64 string (RFC 4648 alphabet, padded, no whitespace) into a frame.

    Args:
        text: base64 of PNG or JPEG bytes, as the HTTP API carries frames.
        frame_px: output side length.
        max_pixels: see `decode_image`.
        max_bytes: largest decoded size accepted (checked before decoding the base64).

    Returns:
        (frame_px, frame_px, 3) uint8 RGB.

    Raises:
        ImageError: for a data URL, characters outside the alphabet, bad padding, or any
            `decode_image` error.
    """
    data = base64_image_bytes(text, max_bytes=max_bytes)
    return decode_image(data, frame_px=frame_px, max_pixels=max_pixels, max_bytes=max_bytes)


def resize_frame(rgb: NDArray[np.uint8], frame_px: int) -> NDArray[np.uint8]:
    """Resize one RGB frame to (frame_px, frame_px, 3) (rules in the module docstring).

    Args:
        rgb: (H, W, 3) uint8.
        frame_px: output side length.

    Returns:
        (frame_px, frame_px, 3) uint8; the input itself (made contiguous) when the size matches.
    """
    H, W = rgb.shape[:2]
    if (H, W) == (frame_px, frame_px):
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    if H % frame_px == 0 and W % frame_px == 0:  # block mean, as training.data.fmf._resize
        blocks = rgb.reshape(frame_px, H // frame_px, frame_px, W // frame_px, 3)
        mean: NDArray[np.float64] = blocks.mean(axis=(1, 3))  # (frame_px, frame_px, 3)
        return np.round(mean).astype(np.uint8)
    down = H >= frame_px and W >= frame_px
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    out = Image.fromarray(rgb).resize((frame_px, frame_px), method)
    return np.array(out, dtype=np.uint8)


def encode_png(frame: NDArray[np.uint8]) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 frame (for tests, replays and the demo).

    Args:
        frame: (H, W, 3) uint8 RGB.

    Returns:
        The lossless PNG encoding.

    Raises:
        ValueError: for another shape or dtype.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        msg = f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}"
        raise ValueError(msg)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
    return buf.getvalue()


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the PNG IHDR or the first JPEG SOF marker; None if not found."""
    if fmt == "PNG":
        return (
            (int.from_bytes(data[16:20]), int.from_bytes(data[20:24])) if len(data) >= 24 else None
        )
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[i + 7 : i + 9]), int.from_bytes(data[i + 5 : i + 7])
        i += 2 + int.from_bytes(data[i + 2 : i + 4])
    return None


def _to_rgb(img: Image.Image) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 from any PNG/JPEG mode; forces the full decode."""
    if img.mode in _WIDE_GREY_MODES:  # 16-bit grey: keep the high byte (convert() saturates)
        grey = np.asarray(img, dtype=np.int64)
        hi = np.clip(grey >> 8, 0, 255).astype(np.uint8)
        return np.repeat(hi[..., None], 3, axis=-1)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
    if img.mode != "RGB":
        img = img.convert("RGB")
    else:
        img.load()
    return np.asarray(img, dtype=np.uint8)
