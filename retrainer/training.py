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
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from retrainer import Log
from retrainer.checkpoints import CheckpointMirror
from retrainer.data.inputs import input_fn
from retrainer.devices import DevicePlan, detect_devices, strategy_for
from retrainer.errors import BadInput
from retrainer.models import BackboneWeights, build_model, start_fine_tuning
from retrainer.records import DataSplit, TrainedModel
from retrainer.settings import TrainingConfig

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
    """Copy the epoch Keras just backed up to the object store.

    The first save is said where the run's log shows it; the others are debug lines, so the log
    reads one line per epoch.
    """

    def __init__(self, mirror: CheckpointMirror, log: Log) -> None:
        super().__init__()
        self.mirror = mirror
        self.log = log
        self.saved = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.mirror.save(epoch + 1)
        say = self.log.debug if self.saved else self.log.info
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
    warm_start: Path | None = None,
    started_from: str = "a fresh model",
    log: Log = logger,
    on_epoch: Callable[[int, int], None] | None = None,
    plan: DevicePlan | None = None,
    backbone_weights: BackboneWeights | None = None,
) -> TrainedModel:
    """Fit on the training split, resuming from the last finished epoch of this same work."""
    started_at = datetime.now(UTC)
    keras.utils.set_random_seed(config.seed)
    plan = plan or detect_devices(config.mixed_precision)
    log.info(plan.description)
    keras.mixed_precision.set_global_policy(plan.precision)

    strategy = strategy_for(plan)
    # The batch size is per replica: the strategy splits each global batch between them.
    replicas = strategy.num_replicas_in_sync
    scaled = split.model_copy(update={"batch_size": split.batch_size * replicas})
    train = input_fn(scaled, "train", shuffle=True, seed=config.seed)
    validation = input_fn(scaled, "validation", shuffle=False)
    with strategy.scope():
        model, started_from = build_model(
            config, split, warm_start, started_from, log, backbone_weights
        )

    mirror.local_dir.mkdir(parents=True, exist_ok=True)
    resumed_from = mirror.restore(log)
    history_path = mirror.local_dir / "history.json"
    history: dict[str, list[float]] = {}
    total_epochs = config.total_epochs
    if resumed_from:
        saved = json.loads(history_path.read_text())
        history = {name: values[:resumed_from] for name, values in saved.items()}
        log.info("Resuming at epoch %d of %d", resumed_from + 1, total_epochs)
    log.info(
        "Training for %d epochs on %d images, validating on %d, batch size %d (%d per replica "
        "on %d replica(s)), from %s",
        total_epochs,
        split.train_count,
        split.validation_count,
        scaled.batch_size,
        split.batch_size,
        replicas,
        started_from,
    )
    tensorboard_dir = output_dir / "tensorboard"
    callbacks: list[keras.callbacks.Callback] = [
        EpochEnd(total_epochs, history, history_path, log, on_epoch),
        keras.callbacks.BackupAndRestore(str(mirror.local_dir), delete_checkpoint=False),
        MirrorCheckpoint(mirror, log),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(str(tensorboard_dir), write_graph=False, profile_batch=0),
    ]
    early_stopping: list[keras.callbacks.Callback] = []
    if config.early_stopping_patience:
        early_stopping.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    weights = class_weights(split, config)
    if weights:
        log.info(
            "Class weights (balanced from the training counts): %s",
            ", ".join(f"{split.class_names[i]} {w:.2f}" for i, w in weights.items()),
        )

    def fit(first_epoch: int, last_epoch: int, stops: list[keras.callbacks.Callback]) -> None:
        """Epochs first_epoch+1 to last_epoch; BackupAndRestore moves the start to the last
        finished epoch of this work."""
        try:
            model.fit(
                train,
                validation_data=validation,
                initial_epoch=first_epoch,
                epochs=last_epoch,
                class_weight=weights,
                callbacks=callbacks + stops,
                shuffle=False,  # the dataset shuffles itself; Keras cannot shuffle tf.data
                verbose=0,
            )
        except tf.errors.ResourceExhaustedError as error:
            # The same batch on the same card would run out again: not worth a retry.
            raise OutOfDeviceMemory(
                f"training on {', '.join(plan.devices)} ran out of memory with batches of "
                f"{scaled.batch_size} images of {split.image_size} px: lower "
                "RETRAINER_BATCH_SIZE (or RETRAINER_IMAGE_SIZE); the last finished epoch is kept "
                f"and training resumes there ({str(error.message).splitlines()[0][:200]})"
            ) from None

    fine_tuning = config.total_epochs > config.epochs
    if fine_tuning:
        log.info(
            "Transfer learning on %s: %d epochs train the new classifier on the frozen "
            "backbone (learning rate %g), then %d fine-tune the backbone too (learning rate %g)",
            config.backbone,
            config.epochs,
            config.learning_rate,
            config.fine_tune_epochs,
            config.fine_tune_learning_rate,
        )
    # A resumed run that finished every epoch still calls fit: BackupAndRestore loads the last
    # epoch's weights there. When fine-tuning was reached, its own fit loads them.
    if resumed_from < config.epochs or not fine_tuning:
        # Early stopping belongs to the last phase: a frozen phase cut short would leave the
        # fine-tuning phase no fixed epoch to start, and resume, at.
        fit(0, config.epochs, [] if fine_tuning else early_stopping)
    if fine_tuning and not any(math.isnan(value) for value in history.get("loss", [])):
        with strategy.scope():
            trainable = start_fine_tuning(model, config)
        log.info(
            "Fine-tuning from epoch %d: the backbone trains too (%d weights train)",
            config.epochs + 1,
            trainable,
        )
        with warnings.catch_warnings():
            # The checkpoint of the last frozen epoch holds that phase's optimizer, which has
            # fewer variables than the new one: Keras skips it with a warning, as it should.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            fit(config.epochs, total_epochs, early_stopping)

    epochs_run = len(history.get("loss", []))
    diverged = None
    if any(math.isnan(value) for value in history.get("loss", [])):
        diverged = f"the training loss became NaN in epoch {epochs_run}"
        log.error("Training diverged: %s", diverged)
    elif epochs_run < total_epochs:
        log.info(
            "Stopped early after epoch %d: val_loss had not improved for %d epochs; "
            "the best weights are kept",
            epochs_run,
            config.early_stopping_patience,
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
        diverged=diverged,
        stopped_early=not diverged and epochs_run < total_epochs,
    )
