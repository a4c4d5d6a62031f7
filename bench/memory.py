"""Memory: peak resident memory of a whole training run (list, prepare, validate, split, train)
at 1x and 10x the images, each in a fresh process, in one run: with the subsets held in memory
(they fit the input function's budget, INPUT_MEMORY_BUDGET) and streamed from the shards (what a
dataset past the budget gets), so memory grows with the data up to the budget, then no more.
Streamed is measured on glibc's malloc (with the arenas `retrainer` sets) and on tcmalloc, which
the image preloads (when this machine has it: apt-get install libtcmalloc-minimal4).

    make bench  (or: .venv/bin/python -m bench.memory) [--images 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import child_figures, distinct_images, peak_rss_mb, write_tree
from retrainer.doctor import TCMALLOC

SIZE = 64


def train_once(folder: Path, streamed: bool) -> None:
    """In the child: the project's stages on the images in `folder`, then print peak memory."""
    from retrainer.checkpoints import checkpoint_mirror
    from retrainer.data.local import split_here
    from retrainer.settings import load_settings
    from retrainer.storage import LocalStore
    from retrainer.training import train_model

    settings = load_settings(epochs=2, early_stopping_patience=0, image_size=SIZE)
    config = settings.training_config()
    images, store = str(folder / "images"), str(folder / "store")
    split = split_here(images, store, folder / "work", config, 5, 0.0)
    if streamed:  # past the in-memory budget: what a larger dataset gets
        split = split.model_copy(update={"memory_budget": 0})
    mirror = checkpoint_mirror(LocalStore(folder / "store"), folder / "cache", "bench", "m" * 32)
    train_model(split, settings.training_config(), folder / "out", mirror)
    print(f"PEAK_RSS_MB {peak_rss_mb():.0f}")


def measure(count: int, streamed: bool, tcmalloc: bool) -> float:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_tree(folder / "images", distinct_images(count, size=SIZE))
        arguments = [str(folder)] + (["--streamed"] if streamed else [])
        (peak,) = child_figures("bench.memory", arguments, tcmalloc, "PEAK_RSS_MB")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--child", type=Path)
    parser.add_argument("--streamed", action="store_true")
    arguments = parser.parse_args()
    if arguments.child:
        train_once(arguments.child, arguments.streamed)
        return
    print(f"peak RSS of a training run ({SIZE}x{SIZE} JPEGs, 2 epochs, batch 32):")
    tcmalloc = TCMALLOC.exists()
    cases = [
        (f"subsets held in memory, {'tcmalloc' if tcmalloc else 'glibc malloc'}", False, tcmalloc),
        ("streamed from the shards, glibc malloc", True, False),
    ]
    if tcmalloc:
        cases.append(("streamed from the shards, tcmalloc (the image's)", True, True))
    else:
        print(f"  (no {TCMALLOC}: tcmalloc not measured; apt-get install libtcmalloc-minimal4)")
    for how, streamed, preload in cases:
        small = measure(arguments.images, streamed, preload)
        large = measure(arguments.images * 10, streamed, preload)
        print(f"  {how}: {arguments.images:,} images {small:.0f} MB, ", end="")
        print(f"{arguments.images * 10:,} images {large:.0f} MB: {100 * (large / small - 1):+.1f}%")
    print(
        "targets: streamed on tcmalloc, growth at 10x the data under 10%; held, at most the budget"
    )


if __name__ == "__main__":
    main()
