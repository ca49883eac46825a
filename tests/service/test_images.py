"""Frame decoding: exact PNG pixels, JPEG, resizing, modes, limits and clear errors."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.images import (
    ImageError,
    decode_base64_image,
    decode_image,
    encode_png,
    image_format,
    resize_frame,
)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zlib_png(frame: np.ndarray, *, width: int | None = None, height: int | None = None) -> bytes:
    """PNG written with the standard library only (as the simulator's replayer does)."""
    h, w = frame.shape[:2]
    ihdr = struct.pack(">IIBBBBB", width or w, height or h, 8, 2, 0, 0, 0)  # 8-bit RGB
    raw = b"".join(b"\x00" + frame[r].tobytes() for r in range(h))  # filter 0 per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _pil_bytes(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_png_of_model_size_decodes_exactly(frame: np.ndarray) -> None:
    for data in (_zlib_png(frame), encode_png(frame)):
        out = decode_image(data)
        assert out.dtype == np.uint8 and out.shape == (64, 64, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, frame)


def test_jpeg_decodes_close_to_the_original() -> None:
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([y * 3, x * 3, (x + y) * 2], axis=-1).astype(np.uint8)
    out = decode_image(_pil_bytes(Image.fromarray(smooth), "JPEG", quality=95))
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 3.0


def test_integer_downscale_is_the_block_mean() -> None:
    big = np.random.default_rng(1).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    out = decode_image(encode_png(big))
    expected = np.round(big.reshape(64, 2, 64, 3, 3).mean(axis=(1, 3))).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)  # the arithmetic of training.data.fmf._resize


@pytest.mark.parametrize("size", [(352, 288), (100, 70), (32, 32), (20, 500)])
def test_any_size_becomes_frame_px_and_keeps_flat_colour(size: tuple[int, int]) -> None:
    img = Image.new("RGB", size, (10, 120, 250))
    for fmt in ("PNG", "JPEG"):
        out = decode_image(_pil_bytes(img, fmt), frame_px=48)
        assert out.shape == (48, 48, 3)
        assert np.abs(out.astype(int) - [10, 120, 250]).max() <= 3
    assert resize_frame(np.zeros((64, 64, 3), np.uint8), 64).shape == (64, 64, 3)


def test_modes_become_rgb() -> None:
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 256
    l_img = Image.fromarray(grey.astype(np.uint8))
    out = decode_image(_pil_bytes(l_img, "PNG"))
    np.testing.assert_array_equal(out, np.repeat(grey.astype(np.uint8)[..., None], 3, -1))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7  # alpha is dropped, colour kept
    np.testing.assert_array_equal(
        decode_image(_pil_bytes(Image.fromarray(rgba), "PNG"))[0, 0], [200, 0, 0]
    )
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    pal.info["transparency"] = 0
    np.testing.assert_array_equal(decode_image(_pil_bytes(pal, "PNG"))[5, 5], [30, 60, 90])
    wide = Image.fromarray(np.full((64, 64), 0xAB12, np.uint16))  # 16-bit grey
    np.testing.assert_array_equal(decode_image(_pil_bytes(wide, "PNG"))[0, 0], [0xAB] * 3)
    cmyk = Image.new("CMYK", (64, 64), (0, 0, 0, 0))
    assert (decode_image(_pil_bytes(cmyk, "JPEG")) > 240).all()


@pytest.mark.fault(
    "a PNG header claiming 20000x20000 (decompression bomb); images over a pixel or byte limit",
    expected="ImageError `too_large` from the header, before any decoding",
)
def test_header_size_checked_before_decoding() -> None:
    huge = _zlib_png(np.zeros((1, 1, 3), np.uint8), width=20000, height=20000)
    with pytest.raises(ImageError, match=r"image 20000x20000 exceeds the 16\.8 MP limit") as e:
        decode_image(huge)
    assert e.value.reason == "too_large"
    ok = _zlib_png(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ImageError, match="exceeds the 0.0 MP limit"):
        decode_image(ok, max_pixels=64 * 63)
    with pytest.raises(ImageError, match="byte limit") as e:
        decode_image(ok, max_bytes=10)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"GIF89a\x01\x00\x01\x00", r"not a PNG or JPEG \(first bytes 0x474946383961"),
        (b"BM" + bytes(60), "not a PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 5, "corrupt PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt JPEG"),
    ],
)
@pytest.mark.fault(
    "image bytes that are empty, GIF, BMP, or a corrupt PNG or JPEG",
    expected="ImageError `decode` with a message naming the format",
)
def test_rejects_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as e:
        decode_image(data)
    assert isinstance(e.value, ValueError) and e.value.reason == "decode"


@pytest.mark.fault(
    "a PNG cut in half",
    expected="ImageError `corrupt PNG`",
)
def test_truncated_png_is_corrupt(frame: np.ndarray) -> None:
    data = encode_png(frame)
    with pytest.raises(ImageError, match="corrupt PNG"):
        decode_image(data[: len(data) // 2])


def test_image_format_by_magic_bytes() -> None:
    assert image_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert image_format(b"\xff\xd8\xff\xdb") == "JPEG"


@pytest.mark.fault(
    "bad base64 image text: invalid characters, an embedded newline, broken padding, a data: URL, "
    "non-ASCII; too many bytes; no image",
    expected="ImageError naming the problem",
)
def test_base64_round_trip_and_strictness(frame: np.ndarray) -> None:
    text = base64.b64encode(encode_png(frame)).decode()
    np.testing.assert_array_equal(decode_base64_image(text), frame)
    for bad, message in [
        (text[:-2] + "*=", "invalid base64"),
        (text[:40] + "\n" + text[40:], "invalid base64"),
        (text[:-1], "invalid base64"),  # broken padding
        ("data:image/png;base64," + text, "data URL"),
        ("ÿÿÿÿ", "invalid base64"),
    ]:
        with pytest.raises(ImageError, match=message):
            decode_base64_image(bad)
    with pytest.raises(ImageError, match="byte limit"):
        decode_base64_image(text, max_bytes=100)
    with pytest.raises(ImageError, match="not a PNG or JPEG"):
        decode_base64_image(base64.b64encode(b"hello world").decode())


@pytest.mark.fault(
    "a 16x16 JPEG whose header claims 20000x30000",
    expected="ImageError naming the size and the 16.8 MP limit, before decoding",
)
def test_bomb_sized_jpeg_header_is_rejected_with_its_size() -> None:
    data = bytearray(_pil_bytes(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    with pytest.raises(ImageError, match=r"image 20000x30000 exceeds the 16\.8 MP limit"):
        decode_image(bytes(data))
