"""Real photographs: validation and test accuracy of the training defaults (and of any variant
given on the command line) on a three-class set of camera photographs, in one run.

The photographs are scikit-image's brick, grass and gravel (512 x 512 camera photographs that
ship inside its wheel, so nothing is downloaded). Each is cut into 100 tiles that share no
pixel, so no test image overlaps a training image; each tile is turned, lit and sized
differently and saved as a JPEG of 96 to 160 px, as a camera's files would differ.

    .venv/bin/python -m bench.photos [--variant image_size=64,epochs=20] ...

Every `--variant` is a comma-separated list of settings (name=value) compared with the defaults.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import write_tree

CLASSES = ("brick", "grass", "gravel")
TILES_PER_SIDE = 10  # 100 photographs per class


def texture_photographs(seed: int = 0) -> dict[str, bytes]:
    """`<class>/<n>.jpg` for every tile of every class's photograph."""
    from skimage import data

    rng = np.random.default_rng(seed)
    files = {}
    for name in CLASSES:
        photograph = getattr(data, name)()
        side = photograph.shape[0] // TILES_PER_SIDE
        for row in range(TILES_PER_SIDE):
            for column in range(TILES_PER_SIDE):
                tile = photograph[
                    row * side : (row + 1) * side, column * side : (column + 1) * side
                ]
                tile = np.rot90(tile, k=int(rng.integers(4)))
                # Another light and exposure for each: gain and offset, as a camera would vary.
                lit = tile * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
                image = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)).convert("RGB")
                size = int(rng.integers(96, 161))
                image = image.resize((size, size), Image.Resampling.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
                files[f"{name}/{row * TILES_PER_SIDE + column:03d}.jpg"] = buffer.getvalue()
    return files


def parse_variant(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if item)


def measure(source: Path, work: Path, overrides: dict[str, str]) -> tuple[float, float, int]:
    """Validation and test accuracy, and epochs run, of one training with these settings."""
    import keras

    from retrainer.checkpoints import checkpoint_mirror
    from retrainer.data.local import split_here
    from retrainer.evaluation import predict, score_predictions
    from retrainer.settings import load_settings
    from retrainer.storage import LocalStore
    from retrainer.training import train_model

    config = load_settings(**overrides).training_config()
    split = split_here(str(source), str(work / "store"), work / "work", config)
    mirror = checkpoint_mirror(LocalStore(work / "store"), work / "cache", "photos", "p" * 32)
    trained = train_model(split, config, work / "out", mirror)
    model = keras.models.load_model(trained.model_path, compile=False)
    validation = score_predictions(*predict(model, split, "validation"), split.class_names)
    test = score_predictions(*predict(model, split, "test"), split.class_names)
    return validation.accuracy, test.accuracy, trained.epochs_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", default=[], help="name=value,...")
    parser.add_argument("--seeds", type=int, default=3, help="trainings per variant")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    variants = {"defaults": {}} | {text: parse_variant(text) for text in arguments.variant}
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as folder:
        source = write_tree(Path(folder) / "photos", texture_photographs())
        for index, (name, overrides) in enumerate(variants.items()):
            # Seeds change the initial weights and the order of batches; the split stays.
            runs = [
                measure(source, Path(folder) / f"run-{index}-{seed}", {**overrides, "seed": seed})
                for seed in range(arguments.seeds)
            ]
            validation, test, epochs = (np.array(values) for values in zip(*runs, strict=True))
            rows.append((name, validation, test, epochs))
    print(f"{len(CLASSES)} classes x {TILES_PER_SIDE**2} photographs (scikit-image {CLASSES})")
    print(f"accuracy, mean (lowest) of {arguments.seeds} seeds")
    print(f"{'settings':64} {'validation':>14} {'test':>14} {'epochs':>6}")
    for name, validation, test, epochs in rows:
        print(
            f"{name:64} {validation.mean():6.3f} ({validation.min():.3f}) "
            f"{test.mean():6.3f} ({test.min():.3f}) {epochs.mean():6.1f}"
        )


def cnn_batchnorm(input_shape: tuple[int, int, int], num_classes: int):
    """A candidate default: the built-in CNN with batch normalization after each convolution."""
    import keras

    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


if __name__ == "__main__":
    main()
