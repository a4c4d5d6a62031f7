"""Train: pick the device, build or warm-start the model, run `model.fit` so it survives preemption.

Each finished epoch is backed up by Keras' BackupAndRestore and mirrored to the object store (see
checkpoints.py), so a retry, or a new run of the same work on another machine, resumes at the next
epoch. The history file keeps every epoch, including those before a resume.
"""

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

from retrainer import Log
from retrainer.checkpoints import CheckpointMirror
from retrainer.dataset import CHANNELS, input_fn
from retrainer.errors import SettingsError
from retrainer.records import Batches, ChampionRecord, TrainedModel
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings

logger = logging.getLogger(__name__)

MIXED_PRECISION_MIN_CAPABILITY = (7, 0)  # Volta and newer have tensor cores for float16


@dataclass(frozen=True)
class DevicePlan:
    """Where and how training runs; chosen from the device list alone, so testable without GPUs."""

    kind: str  # "cpu", "gpu" or "multi-gpu"
    devices: tuple[str, ...]
    precision: str  # "float32" or "mixed_float16"
    description: str

    @property
    def replicas(self) -> int:
        return len(self.devices) if self.kind == "multi-gpu" else 1


def plan_devices(capabilities: list[tuple[int, int] | None], mixed_precision: str) -> DevicePlan:
    """`capabilities`: one compute capability per visible GPU (None when unknown)."""
    if mixed_precision == "on":
        precision = "mixed_float16"
    elif mixed_precision == "auto" and capabilities:
        known = [capability or (0, 0) for capability in capabilities]
        fast = all(capability >= MIXED_PRECISION_MIN_CAPABILITY for capability in known)
        precision = "mixed_float16" if fast else "float32"
    else:
        precision = "float32"
    if not capabilities:
        return DevicePlan(
            "cpu", ("/CPU:0",), precision, f"No GPU found: training on the CPU ({precision})"
        )
    if len(capabilities) == 1:
        return DevicePlan("gpu", ("/GPU:0",), precision, f"Training on 1 GPU (/GPU:0, {precision})")
    devices = tuple(f"/GPU:{index}" for index in range(len(capabilities)))
    return DevicePlan(
        "multi-gpu",
        devices,
        precision,
        f"Training on {len(devices)} GPUs with MirroredStrategy ({precision})",
    )


def detect_devices(mixed_precision: str) -> DevicePlan:
    gpus = tf.config.list_physical_devices("GPU")
    capabilities = []
    for gpu in gpus:
        # Without memory growth TensorFlow reserves the whole card at start-up.
        tf.config.experimental.set_memory_growth(gpu, True)
        capabilities.append(
            tf.config.experimental.get_device_details(gpu).get("compute_capability")
        )
    return plan_devices(capabilities, mixed_precision)


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
    # float32 output: softmax in float16 loses the small probabilities the loss needs.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name="retrainer_cnn")


def load_model_factory(spec: str) -> Callable[[tuple[int, int, int], int], keras.Model]:
    """`package.module:function` -> the function; a clear error if it is not there."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise SettingsError(
            f"RETRAINER_MODEL_FACTORY: '{spec}' must look like package.module:function"
        )
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"RETRAINER_MODEL_FACTORY: cannot load '{spec}': {error}") from None
    if not callable(factory):
        raise SettingsError(f"RETRAINER_MODEL_FACTORY: '{spec}' is not a function")
    return factory


def find_warm_start(
    registry: ModelRegistry,
    champion: ChampionRecord | None,
    batches: Batches,
    policy: str,
    models_dir: Path,
    log: Log = logger,
) -> tuple[Path | None, str]:
    """The champion's model file to start from, or None; and what training starts from, in words."""
    if policy == "never":
        return None, "a fresh model (warm start is off)"
    if champion is None:
        reason = "there is no champion yet"
    elif champion.class_names != batches.class_names:
        reason = f"champion {champion.version} was trained on other classes"
    else:
        path = registry.download_champion_model(champion, models_dir)
        log.info("Warm start: training continues from champion %s", champion.version)
        return path, f"champion {champion.version}"
    if policy == "always":
        raise SettingsError(f"RETRAINER_WARM_START=always, but {reason}")
    log.info("Starting from a fresh model: %s", reason)
    return None, f"a fresh model ({reason})"


def build_model(
    settings: Settings, batches: Batches, warm_start: Path | None, started_from: str, log: Log
) -> tuple[keras.Model, str]:
    """The model to fit, compiled, and what it starts from (the champion may not fit after all)."""
    input_shape = (batches.image_size, batches.image_size, CHANNELS)
    if warm_start is not None:
        model = keras.models.load_model(warm_start, safe_mode=True)
        if tuple(model.input_shape[1:]) == input_shape:
            model.compile(
                optimizer=keras.optimizers.Adam(settings.learning_rate),
                loss=model.loss,
                metrics=["accuracy"],
                jit_compile=settings.xla,
            )
            return model, started_from
        if settings.warm_start == "always":
            raise SettingsError(
                f"RETRAINER_WARM_START=always, but the champion takes {model.input_shape[1:]}, "
                f"not {input_shape}"
            )
        log.info("Starting from a fresh model: the champion takes another input shape")
        started_from = "a fresh model (the champion's input shape differs)"
    model = load_model_factory(settings.model_factory)(input_shape, len(batches.class_names))
    if not getattr(model, "compiled", False):
        model.compile(
            optimizer=keras.optimizers.Adam(settings.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=settings.xla,
        )
    return model, started_from


class EpochEnd(keras.callbacks.Callback):
    """Log each epoch in words, extend the full history, report progress.

    It runs before Keras' backup of the epoch, so the history on disk is never behind the
    checkpoint; on resume it is cut back to the checkpoint's epoch.
    """

    def __init__(
        self,
        epochs: int,
        history: dict[str, list[float]],
        history_path: Path,
        log: Log,
        on_epoch: Callable[[int, int], None] | None,
    ) -> None:
        super().__init__()
        self.epochs = epochs
        self.history = history
        self.history_path = history_path
        self.log = log
        self.on_epoch = on_epoch
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self.started
        values = {name: float(value) for name, value in (logs or {}).items()}
        self.log.info(
            "Epoch %d/%d: %s (%.1f s)",
            epoch + 1,
            self.epochs,
            ", ".join(f"{name} {value:.4f}" for name, value in values.items()),
            seconds,
        )
        for name, value in {**values, "seconds": seconds}.items():
            self.history.setdefault(name, []).append(value)
        self.history_path.write_text(json.dumps(self.history))
        if self.on_epoch:
            self.on_epoch(epoch + 1, self.epochs)


class MirrorCheckpoint(keras.callbacks.Callback):
    """Copy the epoch Keras just backed up to the object store."""

    def __init__(self, mirror: CheckpointMirror, log: Log) -> None:
        super().__init__()
        self.mirror = mirror
        self.log = log

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.mirror.save(epoch + 1)
        self.log.info(
            "Checkpoint of epoch %d saved to %s",
            epoch + 1,
            self.mirror.store.describe(self.mirror.prefix),
        )


def train_model(
    batches: Batches,
    settings: Settings,
    output_dir: Path,
    mirror: CheckpointMirror,
    warm_start: Path | None = None,
    started_from: str = "a fresh model",
    log: Log = logger,
    on_epoch: Callable[[int, int], None] | None = None,
    plan: DevicePlan | None = None,
) -> TrainedModel:
    """Fit on the training split, resuming from the last finished epoch of this same work."""
    started_at = datetime.now(UTC)
    keras.utils.set_random_seed(settings.seed)
    plan = plan or detect_devices(settings.mixed_precision)
    log.info(plan.description)
    keras.mixed_precision.set_global_policy(plan.precision)

    scaled = batches.model_copy(update={"batch_size": batches.batch_size * plan.replicas})
    train = input_fn(scaled, "train", shuffle=True, seed=settings.seed)
    validation = input_fn(scaled, "validation", shuffle=False)
    with strategy_for(plan).scope():
        model, started_from = build_model(settings, batches, warm_start, started_from, log)

    mirror.local_dir.mkdir(parents=True, exist_ok=True)
    resumed_from = mirror.restore(log)
    history_path = mirror.local_dir / "history.json"
    history: dict[str, list[float]] = {}
    if resumed_from:
        saved = json.loads(history_path.read_text())
        history = {name: values[:resumed_from] for name, values in saved.items()}
        log.info("Resuming at epoch %d of %d", resumed_from + 1, settings.epochs)
    log.info(
        "Training for %d epochs on %d images, validating on %d, batch size %d, from %s",
        settings.epochs,
        batches.train_count,
        batches.validation_count,
        scaled.batch_size,
        started_from,
    )
    tensorboard_dir = output_dir / "tensorboard"
    callbacks: list[keras.callbacks.Callback] = [
        EpochEnd(settings.epochs, history, history_path, log, on_epoch),
        keras.callbacks.BackupAndRestore(str(mirror.local_dir), delete_checkpoint=False),
        MirrorCheckpoint(mirror, log),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(str(tensorboard_dir), write_graph=False, profile_batch=0),
    ]
    if settings.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=settings.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    model.fit(
        train,
        validation_data=validation,
        epochs=settings.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle a tf.data pipeline
        verbose=0,
    )

    epochs_run = len(history.get("loss", []))
    stopped_reason = None
    if any(math.isnan(value) for value in history.get("loss", [])):
        stopped_reason = f"the training loss became NaN in epoch {epochs_run}"
        log.error("Training stopped: %s", stopped_reason)
    elif epochs_run < settings.epochs:
        log.info(
            "Stopped early after epoch %d: val_loss had not improved for %d epochs; "
            "the best weights are kept",
            epochs_run,
            settings.early_stopping_patience,
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / "model.keras"
    model.save(model_path)
    final_history = output_dir / "history.json"
    final_history.write_text(json.dumps(history, indent=2))
    return TrainedModel(
        model_path=model_path,
        history_path=final_history,
        tensorboard_dir=tensorboard_dir,
        device=plan.description,
        started_from=started_from,
        resumed_from_epoch=resumed_from,
        epochs_run=epochs_run,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        stopped_reason=stopped_reason,
    )
