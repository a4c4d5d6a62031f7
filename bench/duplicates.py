"""Copies: what finding them costs next to preparation's own work, per 10,000 images, and the
memory of grouping 100,000.

Preparation's own cost is a chunk prepared as a night prepares it (`prepare_chunk`: read, check
the header, decode and resize, write the shard), from a local folder, so without a download: the
share printed is an upper bound of what the copies add to a night that downloads. Its time
includes the fingerprints, which are measured apart on the same prepared pixels and taken out of
it; the grouping (`find_copies`) runs on the fingerprints of the same images.

    make bench  (or: .venv/bin/python -m bench.duplicates) [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from retrainer.data.duplicates import find_copies
from retrainer.data.fingerprints import exact_fingerprint, perceptual_fingerprint
from retrainer.data.image import model_input
from retrainer.data.preparation import prepare_chunk
from retrainer.records import ListedObject, PreparationChunk, PreparationSpec
from retrainer.storage import LocalStore

PER = 10_000
MANY = 100_000


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def digit_files() -> list[bytes]:
    digits = load_digits().images
    return [png(Image.fromarray(np.round(d * 255 / 16).astype(np.uint8), "L")) for d in digits]


def photograph_files(count: int) -> list[bytes]:
    """Crops of the two bundled photographs, at random places and scales: different images."""
    photographs = load_sample_images().images
    rng = np.random.default_rng(0)
    files = []
    for number in range(count):
        photograph = Image.fromarray(photographs[number % 2])
        width = int(rng.integers(160, 560))  # the photographs are 640 x 427
        height = width * 3 // 4
        left, top = int(rng.integers(0, 640 - width + 1)), int(rng.integers(0, 427 - height + 1))
        crop = photograph.crop((left, top, left + width, top + height)).resize((320, 240))
        files.append(png(crop))
    return files


def measure(files: list[bytes], size: int, rounds: int) -> tuple[float, float, float]:
    """Seconds per image: preparation without the fingerprints, the fingerprints, the grouping."""
    import tensorflow as tf

    spec = PreparationSpec(image_size=size, max_image_bytes=10**8, max_image_pixels=10**8)
    pixels = [model_input(tf.constant(data), spec).numpy() for data in files]
    listed = [
        ListedObject(key=f"class/{number:05d}.png", etag=f"{number}", size=len(data))
        for number, data in enumerate(files)
    ]
    chunk_seconds, fingerprint_seconds, group_seconds = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        source = LocalStore(Path(folder) / "data")
        for listed_object, data in zip(listed, files, strict=True):
            source.put(listed_object.key, data)
        for round_number in range(rounds):
            chunk = PreparationChunk(
                data_url=str(source.root),
                prepared_url=str(Path(folder) / f"prepared-{round_number}"),
                spec=spec,
                objects=listed,
                night=datetime.now(UTC),
            )
            started = time.perf_counter()
            prepared = prepare_chunk(chunk)
            chunk_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            for image in pixels:
                exact_fingerprint(image.tobytes())
                perceptual_fingerprint(image)
            fingerprint_seconds.append(time.perf_counter() - started)
            entries = list(prepared.objects.values())
            started = time.perf_counter()
            find_copies([e.exact for e in entries], [e.perceptual for e in entries])
            group_seconds.append(time.perf_counter() - started)
    fingerprint = statistics.median(fingerprint_seconds) / len(files)
    prepare = statistics.median(chunk_seconds) / len(files) - fingerprint
    return prepare, fingerprint, statistics.median(group_seconds) / len(files)


def grouping_memory() -> tuple[float, float]:
    """Seconds and peak MB to group MANY images of random thumbnails."""
    rng = np.random.default_rng(1)
    perceptual = [row.tobytes().hex() for row in rng.integers(0, 256, (MANY, 64), dtype=np.uint8)]
    exact = [f"{number:032x}" for number in range(MANY)]
    tracemalloc.start()
    started = time.perf_counter()
    find_copies(exact, perceptual)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    cases = {
        "demo digits (8x8 PNG) at 32 px": (digit_files(), 32),
        "photographs (320x240 PNG) at 224 px": (photograph_files(1000), 224),
    }
    print(
        f"Per {PER:,} images, median of {arguments.rounds} rounds, in seconds "
        "(share: what the copies add to preparation)"
    )
    print(f"{'images':40} {'preparation':>12} {'fingerprints':>13} {'grouping':>9} {'share':>6}")
    shares = []
    for name, (files, size) in cases.items():
        prepare, fingerprint, group = measure(files, size, arguments.rounds)
        share = (fingerprint + group) / prepare
        shares.append(share)
        print(
            f"{name:40} {prepare * PER:12.1f} {fingerprint * PER:13.2f} {group * PER:9.2f} "
            f"{share:6.1%}"
        )
    seconds, peak = grouping_memory()
    print(f"grouping {MANY:,} images: {seconds:.1f} s, peak {peak:.0f} MB of Python memory")
    print(f"copies / preparation: at most {max(shares):.1%} (bar: under 10%)")


if __name__ == "__main__":
    main()
