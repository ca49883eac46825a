"""Issue 14 item 8, the inputs schemathesis found accepted: strings and booleans coerced to
numbers, a PNG whose header promises more rows than its data holds, and error messages that
quoted Python object reprs."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from pydantic import ValidationError

from service.images import ImageError, decode_image
from service.schemas import WindowIn

T0 = 1_700_000_000.0


@pytest.mark.fault(
    'numbers sent as strings or booleans ("2", ["1","2","3"], [true,false,true])',
    expected="422: the request models are strict, nothing is coerced",
)
@pytest.mark.parametrize(
    "current",
    [
        {"start": T0, "rate_hz": "2", "samples": [[1.0, 2.0, 3.0]] * 32},
        {"start": T0, "samples": [["1", "2", "3"]] * 32},
        {"start": T0, "samples": [[True, False, True]] * 32},
        {"start": "1700000000", "samples": [[1.0, 2.0, 3.0]] * 32},
    ],
)
def test_numbers_are_not_coerced(current: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WindowIn.model_validate({"current": current})
    ok = {"start": T0, "rate_hz": 2, "samples": [[1, 2, 3]] * 32}  # ints are numbers
    assert WindowIn.model_validate({"current": ok}).current is not None


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@pytest.mark.fault(
    "a PNG whose header says 4096x4096 but whose data holds 10 rows",
    expected="422: truncated PNG (Pillow alone fills the missing rows with zeros)",
)
def test_a_png_with_missing_rows_is_refused() -> None:
    width = height = 4096
    rows = b"".join(b"\x00" + bytes(width * 3) for _ in range(10))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
    png += _chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(png)


@pytest.mark.fault(
    "image bytes that are no image behind a PNG or JPEG signature",
    expected="422 whose message names the problem without Python object reprs",
)
@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(40), b"\xff\xd8\xff" + bytes(40)])
def test_image_errors_do_not_leak_object_reprs(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert "object at 0x" not in str(info.value)
    assert "BytesIO" not in str(info.value)
