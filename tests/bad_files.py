"""Files strangers put in buckets: each decodes in one library and not in another, or not at all.

Built byte by byte where no library writes them, so each case is exactly the one named.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def decompression_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A few hundred bytes that declare 30000 x 30000 pixels: Pillow refuses to open it."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _photo_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_checksum_png() -> bytes:
    """A PNG whose image data fails its CRC: Pillow decodes it, TensorFlow does not."""
    data = bytearray(_photo_png())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 + length] ^= 0xFF
    return bytes(data)


def one_bit_bmp() -> bytes:
    """A black-and-white BMP: Pillow decodes it, TensorFlow does not."""
    pixels = np.random.default_rng(0).integers(0, 2, (16, 16), dtype=np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="BMP")
    return buffer.getvalue()


def rle8_bmp(width: int = 4, height: int = 2) -> bytes:
    """A run-length-encoded 8-bit BMP: Pillow decodes it, TensorFlow does not."""
    rows = b"".join(bytes([width, 1, 0, 0]) for _ in range(height)) + b"\x00\x01"
    palette = b"".join(bytes([index, index, index, 0]) for index in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows
