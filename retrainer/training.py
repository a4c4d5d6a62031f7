"""Train: run `model.fit` on the planned devices so that it survives preemption.

Each finished epoch is backed up by Keras' BackupAndRestore and mirrored to the object store (see
checkpoints.py), so a retry, or a new run of the same work on another machine, resumes at the next
epoch. The history file keeps every epoch, including those before a resume.

With a pretrained backbone, training has two phases in one numbering of epochs: `epochs` train the
new classifier on the frozen backbone, then `fine_tune_epochs` train the backbone too, at a low
learning rate. A resume knows its phase from the epoch it resumes at.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from retrainer.champion import WarmStart
from retrainer.checkpoints import CheckpointMirror
from retrainer.data.inputs import fits_in_memory, input_fn, input_rate
from retrainer.devices import DevicePlan, detect_devices, strategy_for
from retrainer.errors import BadInput
from retrainer.layout import HISTORY_FILE, RunFolder
from retrainer.models import (
    BackboneWeights,
    build_model,
    describe_model,
    start_fine_tuning,
    user_callbacks,
)
from retrainer.records import DataSplit, TrainedModel
from retrainer.settings import DEFAULT_LEARNING_RATE, TrainingConfig

logger = logging.getLogger(__name__)


class OutOfDeviceMemory(BadInput):
    """Training does not fit in the device's memory; the message says what to lower."""


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
        on_epoch: Callable[[int, int], None] | None,
    ) -> None:
        super().__init__()
        self.epochs = epochs
        self.history = history
        self.history_path = history_path
        self.on_epoch = on_epoch
        self.started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self.started
        values = {name: float(value) for name, value in (logs or {}).items()}
        logger.info(
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
    """Copy the epoch Keras just backed up to the object store.

    The first save is said where the run's log shows it; the others are debug lines, so the log
    reads one line per epoch.
    """

    def __init__(self, mirror: CheckpointMirror) -> None:
        super().__init__()
        self.mirror = mirror
        self.saved = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.mirror.save(epoch + 1)
        say = logger.debug if self.saved else logger.info
        self.saved += 1
        say(
            "Checkpoint of epoch %d saved to %s%s",
            epoch + 1,
            self.mirror.store.describe(self.mirror.prefix),
            "" if self.saved > 1 else " (one after every epoch; resumed from there if stopped)",
        )


def class_weights(split: DataSplit, config: TrainingConfig) -> dict[int, float] | None:
    """Weights that make every class count as much in the loss, or None when not wanted or
    the classes are equally frequent already: n / (classes x n of the class)."""
    counts = [split.train_per_class[name] for name in split.class_names]
    if config.class_weights == "none" or len(set(counts)) == 1:
        return None
    total = sum(counts)
    return {i: total / (len(counts) * max(count, 1)) for i, count in enumerate(counts)}


def train_model(
    split: DataSplit,
    config: TrainingConfig,
    output_dir: Path,
    mirror: CheckpointMirror,
    warm_start: WarmStart | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    plan: DevicePlan | None = None,
    backbone_weights: BackboneWeights | None = None,
) -> TrainedModel:
    """Fit on the training split, resuming from the last finished epoch of this same work."""
    started_at = datetime.now(UTC)
    keras.utils.set_random_seed(config.seed)
    plan = plan or detect_devices(
        config.mixed_precision, fine_tuning=config.total_epochs > config.epochs
    )
    logger.info(plan.description)
    keras.mixed_precision.set_global_policy(plan.precision)
    strategy = strategy_for(plan)
    with strategy.scope():
        model, started_from = build_model(
            config, split, warm_start or WarmStart("a fresh model"), backbone_weights
        )

    callbacks = user_callbacks(config.callbacks)
    if callbacks:
        logger.info(
            "Your callbacks (%s): %s",
            config.callbacks,
            ", ".join(type(callback).__name__ for callback in callbacks),
        )
    resumed_from, history = resume(mirror, config)
    # The batch size is per replica: the strategy splits each global batch between them.
    batches = split.model_copy(
        update={"batch_size": split.batch_size * strategy.num_replicas_in_sync}
    )
    weights = class_weights(split, config)
    say_how_training_goes(config, split, batches.batch_size, weights, started_from)
    input_rate = input_speed(batches)
    run = RunFolder(output_dir)
    phase = FitPhase(
        model=model,
        train=input_fn(batches, "train", shuffle=True, seed=config.seed),
        validation=input_fn(batches, "validation", shuffle=False),
        class_weight=weights,
        callbacks=[
            EpochEnd(config.total_epochs, history, mirror.local_dir / HISTORY_FILE, on_epoch),
            keras.callbacks.BackupAndRestore(str(mirror.local_dir), delete_checkpoint=False),
            MirrorCheckpoint(mirror),
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False, profile_batch=0),
            *callbacks,
        ],
        early_stopping_patience=config.early_stopping_patience,
        out_of_memory=f"training on {', '.join(plan.devices)} ran out of memory with batches of "
        f"{batches.batch_size} images of {split.image_size} px",
    )

    fine_tuning = config.total_epochs > config.epochs
    # A resumed run that finished every epoch still calls fit: BackupAndRestore loads the last
    # epoch's weights there. When fine-tuning was reached, its own fit loads them.
    fit_seconds = 0.0
    if resumed_from < config.epochs or not fine_tuning:
        # Early stopping belongs to the last phase: a frozen phase cut short would leave the
        # fine-tuning phase no fixed epoch to start, and resume, at.
        fit_seconds += phase.fit(0, config.epochs, early_stopping=not fine_tuning)
    if fine_tuning and not diverged(history):
        with strategy.scope():
            trainable = start_fine_tuning(model, config)
        logger.info(
            "Fine-tuning from epoch %d: the backbone trains too (%d weights train)",
            config.epochs + 1,
            trainable,
        )
        with warnings.catch_warnings():
            # The checkpoint of the last frozen epoch holds that phase's optimizer, which has
            # fewer variables than the new one: Keras skips it with a warning, as it should.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            fit_seconds += phase.fit(config.epochs, config.total_epochs, early_stopping=True)

    epochs_fitted = len(history.get("loss", [])) - resumed_from
    speed = split.train_count * epochs_fitted / fit_seconds if fit_seconds else None
    return outcome(
        model,
        history,
        run,
        config,
        plan.description,
        describe_model(config),
        started_from,
        resumed_from,
        started_at,
        speed,
        input_rate,
    )


def input_speed(split: DataSplit) -> float | None:
    """What the shards stream at on this node when the training images are too many to hold in
    memory (None when they are held): beside fit's own speed, it shows when training waits."""
    if fits_in_memory(split, split.train_count):
        logger.info("Input: the %d training images are held in memory", split.train_count)
        return None
    rate = input_rate(split, "train", held=False)
    logger.info(
        "Input: the training images stream from the shards at %.0f images/s on this node's %d "
        "CPU cores (read, parsed and batched, without the model)",
        rate,
        os.cpu_count() or 0,
    )
    return rate


def resume(mirror: CheckpointMirror, config: TrainingConfig) -> tuple[int, dict[str, list[float]]]:
    """The last finished epoch of this work (0 if none) and the history up to it."""
    mirror.local_dir.mkdir(parents=True, exist_ok=True)
    resumed_from = mirror.restore()
    if not resumed_from:
        return 0, {}
    saved = json.loads((mirror.local_dir / HISTORY_FILE).read_text())
    logger.info("Resuming at epoch %d of %d", resumed_from + 1, config.total_epochs)
    return resumed_from, {name: values[:resumed_from] for name, values in saved.items()}


def say_how_training_goes(
    config: TrainingConfig,
    split: DataSplit,
    global_batch: int,
    weights: dict[int, float] | None,
    started_from: str,
) -> None:
    logger.info(
        "Training for %d epochs on %d images, validating on %d, batch size %d (%d per replica "
        "on %d replica(s)), from %s",
        config.total_epochs,
        split.train_count,
        split.validation_count,
        global_batch,
        split.batch_size,
        global_batch // split.batch_size,
        started_from,
    )
    if weights:
        logger.info(
            "Class weights (balanced from the training counts): %s",
            ", ".join(f"{split.class_names[i]} {w:.2f}" for i, w in weights.items()),
        )
    if config.total_epochs > config.epochs:
        logger.info(
            "Transfer learning on %s: %d epochs train the new classifier on the frozen "
            "backbone (learning rate %g), then %d fine-tune the backbone too (learning rate %g)",
            config.backbone,
            config.epochs,
            config.learning_rate or DEFAULT_LEARNING_RATE,
            config.fine_tune_epochs,
            config.fine_tune_learning_rate,
        )


@dataclass(frozen=True)
class FitPhase:
    """One call of `model.fit` over a range of epochs: the frozen phase, fine-tuning, or all."""

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset
    class_weight: dict[int, float] | None
    callbacks: list[keras.callbacks.Callback]
    early_stopping_patience: int
    out_of_memory: str = field(repr=False)

    def fit(self, first_epoch: int, last_epoch: int, early_stopping: bool) -> float:
        """Epochs first_epoch+1 to last_epoch; BackupAndRestore moves the start to the last
        finished epoch of this work. Returns the seconds `fit` took."""
        stops = []
        if early_stopping and self.early_stopping_patience:
            stops.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=self.early_stopping_patience,
                    restore_best_weights=True,
                )
            )
        started = time.monotonic()
        try:
            self.model.fit(
                self.train,
                validation_data=self.validation,
                initial_epoch=first_epoch,
                epochs=last_epoch,
                class_weight=self.class_weight,
                callbacks=self.callbacks + stops,
                shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle tf.data
                verbose=0,
            )
        except tf.errors.ResourceExhaustedError as error:
            # The same batch on the same card would run out again: not worth a retry.
            raise OutOfDeviceMemory(
                f"{self.out_of_memory}: lower RETRAINER_BATCH_SIZE (or RETRAINER_IMAGE_SIZE); the "
                "last finished epoch is kept and training resumes there "
                f"({str(error.message).splitlines()[0][:200]})"
            ) from None
        return time.monotonic() - started


def diverged(history: dict[str, list[float]]) -> bool:
    return any(math.isnan(value) for value in history.get("loss", []))


def kept_epoch(history: dict[str, list[float]], config: TrainingConfig, resumed_from: int) -> int:
    """The epoch whose weights the model has: the last one, or with early stopping the best
    val_loss of the last phase. (Keras' EarlyStopping restores the best epoch it saw, also when it
    did not stop; it sees the epochs of its own `fit` call, which starts after a resume.)"""
    epochs_run = len(history.get("loss", []))
    if not config.early_stopping_patience or diverged(history):
        return epochs_run
    phase_start = config.epochs if config.total_epochs > config.epochs else 0
    first = max(phase_start, resumed_from)
    seen = history.get("val_loss", [])[first:]
    return first + 1 + seen.index(min(seen)) if seen else epochs_run


def still_improving(history: dict[str, list[float]]) -> bool:
    """val_loss was at its best in the last epoch: more epochs would likely have helped."""
    losses = history.get("val_loss", [])
    return bool(losses) and not diverged(history) and losses[-1] <= min(losses)


def outcome(
    model: keras.Model,
    history: dict[str, list[float]],
    run: RunFolder,
    config: TrainingConfig,
    device: str,
    model_description: str,
    started_from: str,
    resumed_from: int,
    started_at: datetime,
    images_per_second: float | None,
    input_images_per_second: float | None,
) -> TrainedModel:
    """Save the model and its full history in the run folder, and say how training ended."""
    epochs_run = len(history.get("loss", []))
    why_diverged = None
    if diverged(history):
        why_diverged = f"the training loss became NaN in epoch {epochs_run}"
        logger.error("Training diverged: %s", why_diverged)
    elif epochs_run < config.total_epochs:
        logger.info(
            "Stopped early after epoch %d: val_loss had not improved for %d epochs; "
            "the best weights are kept",
            epochs_run,
            config.early_stopping_patience,
        )
    run.root.mkdir(parents=True, exist_ok=True)
    model.save(run.model)
    run.history.write_text(json.dumps(history, indent=2))
    return TrainedModel(
        model_path=run.model,
        history_path=run.history,
        tensorboard_dir=run.tensorboard,
        device=device,
        model_description=model_description,
        started_from=started_from,
        resumed_from_epoch=resumed_from,
        epochs_run=epochs_run,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        diverged=why_diverged,
        stopped_early=not why_diverged and epochs_run < config.total_epochs,
        kept_epoch=kept_epoch(history, config, resumed_from),
        still_improving=still_improving(history),
        images_per_second=images_per_second,
        input_images_per_second=input_images_per_second,
    )
