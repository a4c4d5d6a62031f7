"""Allocators: tcmalloc (what the image preloads) against glibc's malloc, on the GPU node's costs.

Each measurement runs in a fresh process, the two allocators in turn (the order alternating), and
each ratio is the median over the pairs: this machine's speed drifts between runs. Measured:
- `input_fn` on the training subset of prepared shards (shuffled, batch 32, no model), streamed
  from the shards and held in memory, at 96 and 224 px (`bench.feed`'s rates);
- the built-in CNN's training images/s at 96 px, as `retrainer doctor --benchmark` measures it.
`bench.memory` measures what each does to peak memory.

    make bench  (or: .venv/bin/python -m bench.allocator) [--pairs 4] [--images 4000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import child_figures, distinct_images, write_tree
from retrainer.doctor import TCMALLOC

SIZES = (96, 224)
MEASURES = ("streamed", "held", "training")


def measure_here(split_file: Path) -> None:
    """In the child: the rates of the split in `split_file`, on this process's allocator."""
    from bench.feed import images_per_second
    from retrainer.data.inputs import input_fn
    from retrainer.doctor import phase_speeds
    from retrainer.records import DataSplit
    from retrainer.settings import load_settings

    split = DataSplit.model_validate_json(split_file.read_text())
    streamed = images_per_second(input_fn(split, "train", shuffle=True, memory_budget=0))
    held = images_per_second(input_fn(split, "train", shuffle=True))
    settings = load_settings(image_size=split.preprocessing.image_size)
    training = phase_speeds(settings, "float32")["training"]
    print("RATES", streamed, held, training)


def split_of(work: Path, count: int, size: int) -> Path:
    """The project's own split of `count` distinct images at `size` px, as a file."""
    from retrainer.data.local import split_here
    from retrainer.settings import TrainingConfig

    config = TrainingConfig(image_size=size, batch_size=32)
    images = write_tree(work / "images", distinct_images(count, size))
    split = split_here(str(images), str(work / "store"), work / "work", config, 5, 0.0)
    split_file = work / "split.json"
    split_file.write_text(split.model_dump_json())
    return split_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--child", type=Path)
    arguments = parser.parse_args()
    if arguments.child:
        measure_here(arguments.child)
        return
    if not TCMALLOC.exists():
        sys.exit(f"no {TCMALLOC}: apt-get install libtcmalloc-minimal4, then run this again")
    print("tcmalloc against glibc's malloc, images/s, median ratio of adjacent pairs:")
    with tempfile.TemporaryDirectory() as folder:
        for size in SIZES:
            count = arguments.images if size < 224 else arguments.images // 2
            split_file = split_of(Path(folder) / str(size), count, size)
            ratios: list[list[float]] = []
            for pair in range(arguments.pairs):
                order = (False, True) if pair % 2 == 0 else (True, False)
                measured = {
                    tcmalloc: child_figures("bench.allocator", [str(split_file)], tcmalloc, "RATES")
                    for tcmalloc in order
                }
                ratios.append([t / g for t, g in zip(measured[True], measured[False], strict=True)])
            medians = [statistics.median(column) for column in zip(*ratios, strict=True)]
            cells = ", ".join(
                f"{name} {ratio:.2f}" for name, ratio in zip(MEASURES, medians, strict=True)
            )
            print(f"  {size} px ({arguments.pairs} pairs): {cells}")


if __name__ == "__main__":
    main()
