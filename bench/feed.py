"""Feeding a GPU: what this machine's cores deliver to `model.fit`, and what Keras' loop costs.

On a GPU node the model is fast and the input pipeline and Keras' per-step overhead set the pace
(`../shared/FACTS.md`: one H200 consumes 130,000 images/s of the built-in CNN at 32 px). Measured
side by side in one run, no model but where said:

- `input_fn`: the project's input function on prepared shards (the training subset, shuffled);
- in memory: the same images as tensors through tf.data (`from_tensor_slices`, batch, prefetch);
- bare stream: the shards' records read as bytes, nothing parsed (what streaming could reach);
- `input_fn`, streamed: the same subset forced past the in-memory budget;
- the overhead pair: a one-layer model trained through the project's training path
  (`train_model`: validation, checkpoints, callbacks, its steps per execution) against a bare
  `model.fit` on in-memory tensors with `steps_per_execution=64`.

The last three lines are for scripts, exactly:
    input_fn / in-memory: 32 px R, 96 px R, 224 px R
    streamed / in-memory: 32 px R, 96 px R, 224 px R
    fit overhead: training path / bare fit (steps_per_execution=64): R

    make bench  (or: .venv/bin/python -m bench.feed) [--images 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from bench.common import distinct_images, in_memory_dataset, write_tree
from retrainer.checkpoints import checkpoint_mirror
from retrainer.data.inputs import input_fn
from retrainer.data.local import split_here
from retrainer.data.splits import read_split
from retrainer.settings import TrainingConfig
from retrainer.storage import LocalStore
from retrainer.training import train_model

SIZES = (32, 96, 224)
# What one H200 consumes (FACTS.md, float32), and the measured size whose input rate feeds it.
H200 = (
    ("built-in CNN, 32 px, batch 64", 130_000, 32),
    ("built-in CNN, 128 px, batch 256 (fed at 96 px)", 45_000, 96),
    ("MobileNetV3Small frozen, 224 px", 31_000, 224),
    ("MobileNetV3Small fine-tuned, 224 px", 13_500, 224),
    ("EfficientNetV2B0 fine-tuned, 224 px", 4_000, 224),
)
CORES = os.cpu_count() or 1


def images_per_second(dataset: tf.data.Dataset, passes: int = 3) -> float:
    """The best of `passes` full passes (the first also fills caches and traces)."""
    best = 0.0
    for _ in range(passes):
        started, count = time.perf_counter(), 0
        for batch in dataset:
            count += int(tf.shape(batch[0] if isinstance(batch, tuple) else batch)[0])
        best = max(best, count / (time.perf_counter() - started))
    return best


def input_rates(work: Path, count: int, size: int) -> dict[str, float]:
    config = TrainingConfig(image_size=size, batch_size=32)
    images = write_tree(work / "images", distinct_images(count, size))
    split = split_here(str(images), str(work / "store"), work / "work", config, 5, 0.0)
    memory, _ = in_memory_dataset(split, "train")
    shards = read_split(split).shards["train"]
    bare = tf.data.TFRecordDataset(shards).batch(32).prefetch(tf.data.AUTOTUNE)
    return {
        "input_fn": images_per_second(input_fn(split, "train", shuffle=True)),
        "in memory": images_per_second(memory),
        "bare stream": images_per_second(bare.map(lambda records: (records,))),
        "input_fn, streamed": images_per_second(
            input_fn(split, "train", shuffle=True, memory_budget=0)
        ),
    }


def one_layer(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The smallest model: what is left is Keras' own cost per step."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))


def overhead(work: Path, count: int, epochs: int = 6) -> tuple[float, float]:
    """Training images/s of the later epochs: the training path, and bare `fit` (spe 64)."""
    config = TrainingConfig(
        image_size=32,
        batch_size=32,
        epochs=epochs,
        early_stopping_patience=0,
        model_factory="bench.feed:one_layer",
        class_weights="none",
    )
    images = write_tree(work / "images", distinct_images(count, 32))
    split = split_here(str(images), str(work / "store"), work / "work", config, 5, 0.0)
    mirror = checkpoint_mirror(LocalStore(work / "store"), work / "cache", "feed", "f" * 32)
    trained = train_model(split, config, work / "out", mirror)
    history = trained.history_path.read_text()
    path_seconds = statistics.median(json.loads(history)["seconds"][1:])

    train, _ = in_memory_dataset(split, "train")
    validation, _ = in_memory_dataset(split, "validation")
    model = one_layer((32, 32, 3), 5)
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=64,
    )
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.fit(train, validation_data=validation, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
    bare_seconds = statistics.median(seconds[1:])
    return split.train_count / path_seconds, split.train_count / bare_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000)
    arguments = parser.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in SIZES:
            count = arguments.images if size < 224 else arguments.images // 2
            rates[size] = input_rates(Path(folder) / str(size), count, size)
        path, bare = overhead(Path(folder) / "overhead", arguments.images * 2)
    print(f"Training images/s on this machine's {CORES} cores (per core in brackets), batch 32")
    print(f"{'':24}" + "".join(f"{size:>10} px      " for size in SIZES))
    for name in rates[SIZES[0]]:
        cells = "".join(
            f"{rates[size][name]:>10,.0f} ({rates[size][name] / CORES:>6,.0f})" for size in SIZES
        )
        print(f"{name:24}{cells}")
    print()
    print("Cores like these that input_fn needs to keep one H200 busy (its rates in FACTS.md):")
    for model, consumed, size in H200:
        per_core = rates[size]["input_fn"] / CORES
        print(f"  {model:48} {consumed:>8,} images/s: {consumed / per_core:5.1f} cores")
    print()
    print(f"a one-layer model, 32 px: training path {path:,.0f} images/s, bare fit {bare:,.0f}")
    ratios = ", ".join(
        f"{size} px {rates[size]['input_fn'] / rates[size]['in memory']:.2f}" for size in SIZES
    )
    print(f"input_fn / in-memory: {ratios}")
    streamed = ", ".join(
        f"{size} px {rates[size]['input_fn, streamed'] / rates[size]['in memory']:.2f}"
        for size in SIZES
    )
    print(f"streamed / in-memory: {streamed}")
    print(f"fit overhead: training path / bare fit (steps_per_execution=64): {path / bare:.2f}")


if __name__ == "__main__":
    main()
