"""Train: build the model, pick the device, run `model.fit`, save the model and its history."""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from retrainer.dataset import CHANNELS, input_fn
from retrainer.records import Batches, TrainedModel

logger = logging.getLogger(__name__)

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass(frozen=True)
class DevicePlan:
    """Where training runs; chosen from the device list alone, so it is testable without GPUs."""

    kind: str  # "cpu", "gpu" or "multi-gpu"
    devices: tuple[str, ...]
    description: str

    @property
    def replicas(self) -> int:
        return max(1, len(self.devices)) if self.kind == "multi-gpu" else 1


def plan_devices(gpu_names: list[str]) -> DevicePlan:
    if not gpu_names:
        return DevicePlan("cpu", ("/CPU:0",), "No GPU found: training on the CPU")
    if len(gpu_names) == 1:
        return DevicePlan("gpu", ("/GPU:0",), "Training on 1 GPU (/GPU:0)")
    devices = tuple(f"/GPU:{index}" for index in range(len(gpu_names)))
    return DevicePlan(
        "multi-gpu", devices, f"Training on {len(devices)} GPUs with MirroredStrategy"
    )


def detect_devices() -> DevicePlan:
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        # Without memory growth TensorFlow reserves the whole card at start-up.
        tf.config.experimental.set_memory_growth(gpu, True)
    return plan_devices([gpu.name for gpu in gpus])


def strategy_for(plan: DevicePlan) -> tf.distribute.Strategy:
    if plan.kind == "multi-gpu":
        return tf.distribute.MirroredStrategy(list(plan.devices))
    if plan.kind == "gpu":
        return tf.distribute.OneDeviceStrategy(plan.devices[0])
    return tf.distribute.get_strategy()


def build_default_model(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """A small CNN that trains from scratch, offline, in seconds on a CPU."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="retrainer_cnn")


def load_model_factory(spec: str) -> Callable[[tuple[int, int, int], int], keras.Model]:
    """`package.module:function` -> the function; a clear error if it is not there."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(
            f"RETRAINER_MODEL_FACTORY: '{spec}' must look like package.module:function"
        )
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"RETRAINER_MODEL_FACTORY: cannot load '{spec}': {error}") from None
    if not callable(factory):
        raise ValueError(f"RETRAINER_MODEL_FACTORY: '{spec}' is not a function")
    return factory


class EpochLog(keras.callbacks.Callback):
    """One human line per epoch: what Keras' progress bar says, in the run's log."""

    def __init__(self, epochs: int, log: Log) -> None:
        super().__init__()
        self.epochs = epochs
        self.log = log
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = ", ".join(f"{name} {value:.4f}" for name, value in (logs or {}).items())
        seconds = time.monotonic() - self.started
        self.log.info("Epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, values, seconds)


def train_model(
    batches: Batches,
    output_dir: Path,
    epochs: int,
    learning_rate: float,
    seed: int,
    model_factory: str,
    log: Log = logger,
) -> TrainedModel:
    """Fit a fresh model on the training split; return where it and its history were saved."""
    started_at = datetime.now(UTC)
    keras.utils.set_random_seed(seed)
    plan = detect_devices()
    log.info(plan.description)
    build = load_model_factory(model_factory)

    scaled = batches.model_copy(update={"batch_size": batches.batch_size * plan.replicas})
    train = input_fn(scaled, "train", shuffle=True, seed=seed)
    validation = input_fn(scaled, "validation", shuffle=False)
    input_shape = (batches.image_size, batches.image_size, CHANNELS)

    with strategy_for(plan).scope():
        model = build(input_shape, len(batches.class_names))
        if not getattr(model, "compiled", False):
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )

    log.info(
        "Training for %d epochs on %d images, validating on %d, batch size %d",
        epochs,
        batches.train_count,
        batches.validation_count,
        scaled.batch_size,
    )
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        callbacks=[EpochLog(epochs, log), keras.callbacks.TerminateOnNaN()],
        shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle a tf.data pipeline
        verbose=0,
    )
    epochs_run = len(history.history.get("loss", []))
    stopped_reason = None
    if any(math.isnan(value) for value in history.history.get("loss", [])):
        stopped_reason = f"the training loss became NaN in epoch {epochs_run}"
        log.error("Training stopped: %s", stopped_reason)

    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / "model.keras"
    model.save(model_path)
    history_path = output_dir / "history.json"
    per_epoch = {name: [float(v) for v in values] for name, values in history.history.items()}
    history_path.write_text(json.dumps(per_epoch, indent=2))
    return TrainedModel(
        model_path=model_path,
        history_path=history_path,
        device=plan.description,
        epochs_run=epochs_run,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        stopped_reason=stopped_reason,
    )
