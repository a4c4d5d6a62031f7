"""Fingerprints: what makes two files the same photograph, taken once from the prepared pixels.

Every usable image gets two, at preparation, by whichever worker prepares it; they live in the
prepared index beside its verdict, so no image is fingerprinted twice:

- exact: the sha256 of its prepared pixels (the first 32 hex digits). The same pixels after
  decoding and resizing: a renamed file, or the same image saved again without loss (PNG, BMP).
- perceptual: the image as 8 x 8 grey levels (the means of 64 blocks of the prepared image),
  compared by their Pearson correlation. Re-encoding (JPEG), resizing and a change of brightness
  or contrast barely move it; two images whose thumbnails correlate at SAME_PHOTOGRAPH or more are
  the same photograph.

Why not a 64-bit DCT hash (pHash): on the demo digits (drawn on 8 x 8 pixels) it puts 5% of the
images within a Hamming distance of 4 of another one while catching only 72% of their
brightness-shifted copies. The thumbnail at a correlation of 0.99 catches every re-encoded,
resized and brightness-shifted copy of the digits and of photographs, and groups 19 of the 1,797
digits (1.1%) with another (in 9 groups, none across classes): tests/test_duplicates.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

THUMBNAIL_SIDE = 8
SAME_PHOTOGRAPH = 0.99  # the least correlation of two thumbnails of one photograph


def exact_fingerprint(pixels: bytes) -> str:
    """The prepared pixels' sha256, shortened: equal for equal pixels."""
    return hashlib.sha256(pixels).hexdigest()[:32]


def perceptual_fingerprint(pixels: np.ndarray) -> str:
    """The prepared image (height, width, 3; uint8) as 8 x 8 grey levels (block means), in hex."""
    grey = Image.fromarray(pixels).convert("L")  # ITU-R 601 luma
    thumbnail = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(thumbnail).tobytes().hex()


def thumbnails(fingerprints: list[str]) -> np.ndarray:
    """Perceptual fingerprints as rows of unit length around their own mean (float32), so that a
    dot product is their Pearson correlation; a flat image (no contrast) is a row of zeros."""
    grey = np.frombuffer(bytes.fromhex("".join(fingerprints)), np.uint8).astype(np.float32)
    rows = grey.reshape(len(fingerprints), THUMBNAIL_SIDE * THUMBNAIL_SIDE)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
