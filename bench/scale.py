"""Bookkeeping at real collections' sizes: what grows with the number of images, at two sizes.

Measured side by side in one run, each at 10,000 and 100,000 objects, with the growth ratio:

- the local folder store's listing (`LocalStore.list`: one `stat` a file for its change token)
  against one bare `os.scandir` walk, and against reading every file for an MD5 (what its ETag
  cost before the change token);
- Prefect handing the prepared index to a task: the index passed plainly to a task with Prefect's
  default cache policy, against quoted and without a cache key, as `flows/prepare.py` passes it.

    make bench  (or: .venv/bin/python -m bench.scale) [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import DEFAULT, NO_CACHE
from prefect.utilities.annotations import quote

from retrainer.records import PreparationSpec, PreparedIndex, PreparedObject
from retrainer.storage import LocalStore

CLASSES = 10
FILE_BYTES = 20_000  # about a photo's JPEG at 224 px


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def write_folder(folder: Path, count: int) -> None:
    """`count` files of FILE_BYTES in CLASSES class folders, no two alike."""
    payload = os.urandom(FILE_BYTES)
    for index in range(count):
        path = folder / f"class{index % CLASSES}" / f"{index:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(index.to_bytes(8, "big") + payload)


def bare_walk(folder: Path) -> int:
    return sum(1 for classes in os.scandir(folder) for _ in os.scandir(classes.path))


def hashing_walk(folder: Path) -> int:
    """What the local store's ETags cost before the change token: every file read for an MD5."""
    for classes in os.scandir(folder):
        for entry in os.scandir(classes.path):
            hashlib.md5(Path(entry.path).read_bytes(), usedforsecurity=False).hexdigest()
    return 0


def listing_figures(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        folder = Path(name)
        write_folder(folder, count)
        store = LocalStore(folder)
        return {
            "LocalStore.list": min(seconds(lambda: list(store.list())) for _ in range(2)),
            "one os.scandir walk": min(seconds(lambda: bare_walk(folder)) for _ in range(2)),
            "an MD5 of every file": seconds(lambda: hashing_walk(folder)),
        }


def index_of(count: int) -> PreparedIndex:
    spec = PreparationSpec(image_size=224, max_image_bytes=1 << 26, max_image_pixels=1 << 28)
    objects = {
        f"class{index % CLASSES}/{index:07d}.jpg": PreparedObject(
            etag=f"{index:032x}",
            size=FILE_BYTES,
            shard="0" * 64,
            exact="1" * 32,
            perceptual="2" * 128,
        )
        for index in range(count)
    }
    return PreparedIndex(source_url="s3://bench/photos/", spec=spec, objects=objects)


@task(cache_policy=DEFAULT)
def count_plainly(index: PreparedIndex) -> int:
    return len(index.objects)


@task(cache_policy=NO_CACHE)
def count_quoted(index: PreparedIndex) -> int:
    return len(index.objects)


@flow(name="bench scale hand-off")
def hand_off(count: int) -> dict[str, float]:
    index = index_of(count)  # built here: a flow's parameters go to the API, and are bounded
    return {
        "index passed plainly": seconds(lambda: count_plainly(index)),
        "quoted, no cache key": seconds(lambda: count_quoted(quote(index))),  # type: ignore[arg-type]
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    arguments = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    figures: dict[int, dict[str, float]] = {}
    for count in arguments.sizes:
        figures[count] = listing_figures(count) | hand_off(count)
    small, large = arguments.sizes
    growth = f"growth at {large / small:.0f}x"
    print(f"| what | {small:,} | {large:,} | {growth} | per object at {large:,} |")
    print("|---|---|---|---|---|")
    for name in figures[small]:
        first, second = figures[small][name], figures[large][name]
        print(
            f"| {name} | {first:.2f} s | {second:.2f} s | {second / first:.1f}x | "
            f"{second / large * 1e6:.1f} us |"
        )
    listing, hashing = figures[large]["LocalStore.list"], figures[large]["an MD5 of every file"]
    print(
        f"listing / bare walk at {large:,}: {listing / figures[large]['one os.scandir walk']:.1f}x"
    )
    print(f"listing / MD5 of every file at {large:,}: {listing / hashing:.2f}")
    hand = figures[large]
    print(
        f"hand-off at {large:,}: plain {hand['index passed plainly']:.2f} s, "
        f"quoted {hand['quoted, no cache key']:.3f} s"
    )


if __name__ == "__main__":
    main()
