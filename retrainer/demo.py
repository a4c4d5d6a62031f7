"""The demo dataset: scikit-learn's bundled handwritten digits, written as PNG files per class.

It ships inside the scikit-learn package, so a fresh machine needs no download, and it is seeded
into the store so the demo goes through the same fetch path as production data.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from retrainer.storage import ObjectStore

logger = logging.getLogger(__name__)


def digit_png(pixels: np.ndarray) -> bytes:
    """An 8x8 digit with 17 grey levels (0-16) as a greyscale PNG."""
    scaled = np.round(pixels * (255 / 16)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scaled, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def seed_demo_data(store: ObjectStore, prefix: str, share: float = 1.0) -> int:
    """Write the first `share` of each digit's images under `prefix` as `<digit>/<index>.png`.

    Images already there are left alone, so seeding a larger share later adds only the rest: the
    demo's "more data arrived overnight". Returns how many images were written.
    """
    digits = load_digits()
    present = {info.key for info in store.list(prefix.rstrip("/") + "/")}
    written = 0
    for label in sorted(set(digits.target.tolist())):
        indices = np.flatnonzero(digits.target == label)
        for index in indices[: math.ceil(share * len(indices))]:
            key = f"{prefix.rstrip('/')}/{label}/{index:04d}.png"
            if key not in present:
                store.put(key, digit_png(digits.images[index]))
                written += 1
    logger.info("Seeded %d demo images into %s", written, store.describe(prefix))
    return written
