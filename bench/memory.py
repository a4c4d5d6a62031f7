"""Memory: peak resident memory of a whole training run (list, prepare, validate, split, train)
at 1x and 10x the images, each in a fresh process, in one run.

    make bench  (or: .venv/bin/python -m bench.memory) [--images 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import jpeg_images, peak_rss_mb, write_tree

SIZE = 64


def train_once(folder: Path) -> None:
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
    mirror = checkpoint_mirror(LocalStore(folder / "store"), folder / "cache", "bench", "m" * 32)
    train_model(split, settings.training_config(), folder / "out", mirror)
    print(f"PEAK_RSS_MB {peak_rss_mb():.0f}")


def measure(count: int) -> float:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_tree(folder / "images", jpeg_images(count, classes=5, size=SIZE))
        answer = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--child", str(folder)],
            capture_output=True,
            text=True,
            check=True,
        )
    line = next(line for line in answer.stdout.splitlines() if line.startswith("PEAK_RSS_MB"))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--child", type=Path)
    arguments = parser.parse_args()
    if arguments.child:
        train_once(arguments.child)
        return
    small = measure(arguments.images)
    large = measure(arguments.images * 10)
    print(f"peak RSS of a training run ({SIZE}x{SIZE} JPEGs, 2 epochs, batch 32):")
    print(f"  {arguments.images:>6} images: {small:6.0f} MB")
    print(f"  {arguments.images * 10:>6} images: {large:6.0f} MB")
    print(f"growth at 10x the data: {100 * (large / small - 1):+.1f}% (target < 10%)")


if __name__ == "__main__":
    main()
