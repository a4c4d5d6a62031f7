"""The demo dataset: scikit-learn's bundled handwritten digits, written as PNG files per class.

It ships inside the scikit-learn package, so a fresh machine needs no download, and it is seeded
into the store so the demo goes through the same list and prepare path as production data.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from retrainer.layout import DEMO_DATA
from retrainer.records import Publication
from retrainer.settings import RetrainParameters, Settings, join_url
from retrainer.storage import ObjectStore, open_store

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


# The digits learn in 10 epochs; the default 30 are for photographs and would triple the demo.
DEMO_EPOCHS = 10
DEMO_NIGHTS = (
    ("Night 1: the first 60% of the digits arrive", 0.6),
    ("Night 2: the rest of the digits arrive", 1.0),
    ("Night 3: nothing new", 1.0),
)


def run_demo_nights(
    settings: Settings, retrain: Callable[[RetrainParameters], Publication]
) -> list[Publication]:
    """Three nights on the embedded default: a first model, more data, nothing new.

    `retrain` runs one night (the CLI passes the Prefect flow), so this scenario stays free of
    any framework.
    """
    store = open_store(settings.store_url)
    parameters = RetrainParameters(
        data_url=join_url(settings.store_url, DEMO_DATA), epochs=DEMO_EPOCHS
    )
    outcomes = []
    for title, share in DEMO_NIGHTS:
        print(f"\n=== {title} ===", flush=True)
        added = seed_demo_data(store, DEMO_DATA, share)
        print(f"{added} new images in {store.describe(DEMO_DATA)}", flush=True)
        outcomes.append(retrain(parameters))
    print("\n=== What happened ===")
    for (title, _), outcome in zip(DEMO_NIGHTS, outcomes, strict=True):
        print(f"{title}\n  {outcome.outcome}: {outcome.message}")
        if outcome.version_url:
            print(f"  model uploaded to {outcome.version_url}")
    champion = outcomes[-1].champion_version
    print(f"\nChampion of '{settings.model_name}': {champion} ({settings.store_url})")
    print("See every version with: .venv/bin/retrainer models")
    return outcomes
