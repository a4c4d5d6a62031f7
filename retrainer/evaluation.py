"""Evaluate: score the candidate and the champion on the same validation images, in one run."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from retrainer import Log
from retrainer.dataset import CHANNELS, input_fn
from retrainer.records import Batches, ChampionRecord, ModelScores
from retrainer.registry import ModelRegistry

logger = logging.getLogger(__name__)

# Probabilities are clipped before the log, as Keras' cross-entropy does, so one confident
# mistake gives a large finite loss rather than infinity.
EPSILON = 1e-7


def score_predictions(
    probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> ModelScores:
    """Loss, accuracy, macro F1, per-class precision and recall, and the confusion matrix."""
    if not np.isfinite(probabilities).all():
        nan = float("nan")
        zero = dict.fromkeys(class_names, 0.0)
        return ModelScores(
            loss=nan,
            accuracy=nan,
            macro_f1=nan,
            precision=zero,
            recall=zero,
            confusion_matrix=[[0] * len(class_names) for _ in class_names],
        )
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(class_names)))
    chosen = probabilities[np.arange(len(labels)), labels]
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=indices, average=None, zero_division=0
    )
    return ModelScores(
        loss=float(np.mean(-np.log(np.clip(chosen, EPSILON, 1.0)))),
        accuracy=float(np.mean(predicted == labels)),
        macro_f1=float(np.mean(f1)),
        precision={name: float(value) for name, value in zip(class_names, precision, strict=True)},
        recall={name: float(value) for name, value in zip(class_names, recall, strict=True)},
        confusion_matrix=confusion_matrix(labels, predicted, labels=indices).tolist(),
    )


def score_model(model: keras.Model, batches: Batches) -> ModelScores:
    validation = input_fn(batches, "validation", shuffle=False)
    labels = np.concatenate([label.numpy() for _, label in validation])
    probabilities = model.predict(validation, verbose=0)
    return score_predictions(probabilities, labels, batches.class_names)


class ChampionUnavailable(RuntimeError):
    """A champion exists but could not be scored: the gate must not decide without it."""


def load_champion_model(
    registry: ModelRegistry, champion: ChampionRecord, batches: Batches, models_dir: Path
) -> tuple[keras.Model | None, str]:
    """The champion's model if it can judge this data, else None and the reason why not.

    Only a deterministic incompatibility (other classes, other input shape) returns None: the
    candidate is then judged by the absolute thresholds. A champion that cannot be fetched,
    checked or loaded raises ChampionUnavailable, so the run never promotes in its absence.
    """
    if champion.class_names != batches.class_names:
        return None, (
            f"champion {champion.version} was trained on classes {champion.class_names}, "
            f"not {batches.class_names}"
        )
    try:
        path = registry.download_champion_model(champion, models_dir)
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # whatever it was, the gate cannot judge without the champion
        raise ChampionUnavailable(
            f"champion {champion.version} could not be scored, so nothing is promoted: {error}"
        ) from error
    expected = (None, batches.image_size, batches.image_size, CHANNELS)
    if tuple(model.input_shape) != expected:
        return None, (
            f"champion {champion.version} takes inputs {model.input_shape}, not {expected}"
        )
    return model, ""


def evaluate(
    candidate_path: Path,
    batches: Batches,
    registry: ModelRegistry,
    champion: ChampionRecord | None,
    models_dir: Path,
    log: Log = logger,
) -> tuple[ModelScores, ModelScores | None, str]:
    """Scores of the candidate and of the champion (None when it cannot be compared), and why."""
    candidate = score_model(
        keras.models.load_model(candidate_path, safe_mode=True, compile=False), batches
    )
    log.info(
        "Candidate on %d validation images: accuracy %.4f, loss %.4f, macro F1 %.4f",
        batches.validation_count,
        candidate.accuracy,
        candidate.loss,
        candidate.macro_f1,
    )
    if champion is None:
        return candidate, None, "first model: no champion to beat"
    model, note = load_champion_model(registry, champion, batches, models_dir)
    if model is None:
        log.warning("%s; the gate decides by the absolute thresholds alone", note)
        return candidate, None, note + "; decided by the absolute thresholds alone"
    scores = score_model(model, batches)
    log.info(
        "Champion %s on the same images: accuracy %.4f, loss %.4f, macro F1 %.4f",
        champion.version,
        scores.accuracy,
        scores.loss,
        scores.macro_f1,
    )
    return candidate, scores, f"compared with champion {champion.version} on the same images"
