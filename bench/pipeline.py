"""Input pipeline: training images/second when `model.fit` reads the project's tf.data pipeline
from the prepared shards on disk, against the same model fed the same images from memory.

This machine's speed drifts by tens of percent within minutes, so the two are measured epoch by
epoch in turn (memory, shards, shards, memory, ...) and each epoch is compared with its
neighbour; the first epoch of each (graph tracing, the shards' parse into the subset's cache) is
reported apart.

    make bench  (or: .venv/bin/python -m bench.pipeline) [--images 2000] [--pairs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import keras

from bench.common import in_memory_dataset, prepare_split
from retrainer.data.inputs import input_fn
from retrainer.models import build_default_model


def compiled_model(size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_default_model((size, size, 3), 5)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def epoch_seconds(model: keras.Model, dataset) -> float:
    started = time.perf_counter()
    model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=10)
    arguments = parser.parse_args()
    size = arguments.size
    with tempfile.TemporaryDirectory() as folder:
        split = prepare_split(Path(folder), arguments.images, size)
        memory, count = in_memory_dataset(split, "train")
        datasets = {"memory": memory, "shards": input_fn(split, "train", shuffle=True)}
        models = {name: compiled_model(size) for name in datasets}
        first = {name: count / epoch_seconds(models[name], datasets[name]) for name in datasets}
        rates: dict[str, list[float]] = {"memory": [], "shards": []}
        for pair in range(arguments.pairs):
            order = ["memory", "shards"] if pair % 2 == 0 else ["shards", "memory"]
            for name in order:
                rates[name].append(count / epoch_seconds(models[name], datasets[name]))
    ratios = [s / m for s, m in zip(rates["shards"], rates["memory"], strict=True)]
    print(f"{count} training images {size}x{size}, batch 32, default model")
    print(f"{'feeding model.fit':30} {'epoch 1':>8}  later epochs, in measured pairs (images/s)")
    for name, label in (("memory", "in-memory tensors (baseline)"), ("shards", "prepared shards")):
        listed = ", ".join(f"{rate:.0f}" for rate in rates[name])
        print(f"{label:30} {first[name]:8.0f}  {listed}")
    print(
        f"shards / in-memory, median of {len(ratios)} adjacent pairs: "
        f"{statistics.median(ratios):.2f} (target >= 0.97)"
    )


if __name__ == "__main__":
    main()
