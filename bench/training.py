"""Training path: images/second of the default model through the project's `train_model`
(tf.data from the prepared shards, checkpoints mirrored to a store every epoch, TensorBoard,
progress callbacks) against a bare `model.fit` on the same images in memory, same model and batch
size, in one run.

    make bench  (or: .venv/bin/python -m bench.training) [--images 2000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import keras

from bench.common import EpochTimer, in_memory_dataset, prepare_split
from retrainer.checkpoints import checkpoint_mirror
from retrainer.models import build_default_model
from retrainer.settings import load_settings
from retrainer.storage import LocalStore
from retrainer.training import train_model

EPOCHS = 4  # epoch 1 is warm-up (tracing; parsing the shards into the cache) and is left out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        split = prepare_split(work, arguments.images, arguments.size)

        memory, count = in_memory_dataset(split, "train")
        keras.utils.set_random_seed(0)
        model = build_default_model((arguments.size, arguments.size, 3), 5)
        model.compile(
            optimizer=keras.optimizers.Adam(3e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        validation, _ = in_memory_dataset(split, "validation")
        timer = EpochTimer()
        model.fit(
            memory,
            validation_data=validation,
            epochs=EPOCHS,
            callbacks=[timer],
            shuffle=False,
            verbose=0,
        )
        bare = count * (EPOCHS - 1) / sum(timer.seconds[1:])

        settings = load_settings(
            epochs=EPOCHS, early_stopping_patience=0, image_size=arguments.size
        )
        mirror = checkpoint_mirror(LocalStore(work / "store"), work / "cache", "bench", "b" * 32)
        # Time between the ends of consecutive epochs: each interval holds a whole epoch with
        # every callback, the previous epoch's checkpoint upload included.
        ends: list[float] = []
        train_model(
            split,
            settings.training_config(),
            work / "out",
            mirror,
            on_epoch=lambda *_: ends.append(time.perf_counter()),
        )
        ours = count * (EPOCHS - 1) / (ends[-1] - ends[0])

    print(
        f"{count} training images {arguments.size}x{arguments.size}, batch 32, default model, "
        "with validation"
    )
    print(f"{'bare model.fit, in-memory tensors':44} {bare:6.0f} images/s")
    print(f"{'retrainer train_model (shards, checkpoints)':44} {ours:6.0f} images/s")
    print(f"project / bare: {ours / bare:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
