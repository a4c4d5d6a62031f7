"""Input pipeline: training images/second when `model.fit` reads the project's tf.data pipeline
from files on disk, against the same model fed the same images from memory, in one run.

    make bench  (or: .venv/bin/python -m bench.pipeline) [--images 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import keras

from bench.common import EpochTimer, in_memory_dataset, prepare_batches
from retrainer.dataset import input_fn
from retrainer.models import build_default_model

EPOCHS = 4  # the first is warm-up: graph tracing, and for files the decode into the cache


def images_per_second(dataset, count: int, size: int) -> tuple[float, float]:
    keras.utils.set_random_seed(0)
    model = build_default_model((size, size, 3), 5)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    model.fit(dataset, epochs=EPOCHS, callbacks=[timer], shuffle=False, verbose=0)
    steady = sum(timer.seconds[1:]) / (EPOCHS - 1)
    return count / timer.seconds[0], count / steady


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        batches = prepare_batches(Path(folder), arguments.images, arguments.size)
        memory, count = in_memory_dataset(batches, "train")
        memory_first, memory_rate = images_per_second(memory, count, arguments.size)
        files = input_fn(batches, "train", shuffle=True)
        files_first, files_rate = images_per_second(files, count, arguments.size)
    print(f"{count} training images {arguments.size}x{arguments.size}, batch 32, default model")
    print(f"{'feeding model.fit':42} {'epoch 1':>9} {'epochs 2-4':>11}")
    print(f"{'in-memory tensors (baseline)':42} {memory_first:9.0f} {memory_rate:11.0f}  images/s")
    label = "project input_fn: files, decoded uint8 cache"
    print(f"{label:42} {files_first:9.0f} {files_rate:11.0f}  images/s")
    print(f"files / in-memory, epochs 2-4: {files_rate / memory_rate:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
