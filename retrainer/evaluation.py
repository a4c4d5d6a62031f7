"""Evaluate: score the candidate and the champion on the same test images, in one run."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from retrainer.champion import fitting_champion_model
from retrainer.data.inputs import input_fn
from retrainer.data.splits import Subset
from retrainer.records import ChampionRecord, DataSplit, Evaluation, ModelScores
from retrainer.registry import ModelRegistry
from retrainer.settings import GateSettings
from retrainer.significance import paired_tests

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


def predict(model: keras.Model, split: DataSplit, subset: Subset) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for every image of the subset, and the true labels, in split order."""
    dataset = input_fn(split, subset, shuffle=False)
    labels = np.concatenate([label.numpy() for _, label in dataset])
    return model.predict(dataset, verbose=0), labels


def split_note(champion: ChampionRecord, split: DataSplit) -> str:
    """Why tonight's comparison may favour the champion, when its splits were not these."""
    if champion.test_fraction is None:
        return (
            f"champion {champion.version} was trained before the test split existed: tonight's "
            "test images were its validation images (never trained on, but early stopping chose "
            "it on them), which favours it"
        )
    if champion.test_fraction != split.test_fraction:
        return (
            f"champion {champion.version} was trained with a test fraction of "
            f"{champion.test_fraction}, not {split.test_fraction}: it may have trained on "
            "some of tonight's test images, which favours it"
        )
    return ""


def copies_in_words(split: DataSplit) -> str:
    """What the gate does not score, or keeps out of training, because of copies; "" if nothing."""
    parts = []
    if split.test_left_out:
        parts.append(
            f"{split.test_left_out} test image(s) left out of the gate: a copy of each trained "
            "before it came"
        )
    if split.held_out:
        parts.append(f"{split.held_out} copy(ies) of test images held out of training")
    return "; ".join(parts)


def evaluate(
    candidate_path: Path,
    split: DataSplit,
    registry: ModelRegistry,
    champion: ChampionRecord | None,
    models_dir: Path,
    gate: GateSettings,
    seed: int,
) -> Evaluation:
    """Score the candidate (validation and test) and the champion (test) on the same images."""
    model = keras.models.load_model(candidate_path, safe_mode=True, compile=False)
    probabilities, labels = predict(model, split, "test")
    candidate = score_predictions(probabilities, labels, split.class_names)
    validation = score_predictions(*predict(model, split, "validation"), split.class_names)
    logger.info(
        "Candidate: accuracy %.4f on %d validation images (chosen on them), %.4f on %d test "
        "images (never seen); test loss %.4f, macro F1 %.4f",
        validation.accuracy,
        split.validation_count,
        candidate.accuracy,
        split.test_count,
        candidate.loss,
        candidate.macro_f1,
    )

    alone = Evaluation(
        candidate=candidate,
        candidate_validation=validation,
        test_images=split.test_count,
        copies=copies_in_words(split),
    )
    if champion is None:
        return alone.model_copy(update={"note": "first model: no champion to beat"})
    # Only a deterministic incompatibility (other classes, other input) lets the absolute
    # thresholds decide alone; a champion that cannot be loaded stops the run (fail closed).
    champion_model, incompatible = fitting_champion_model(registry, champion, split, models_dir)
    if champion_model is None:
        logger.warning("%s; the gate decides by the absolute thresholds alone", incompatible)
        note = f"{incompatible}; decided by the absolute thresholds alone"
        return alone.model_copy(update={"note": note, "champion_version": champion.version})
    champion_probabilities, _ = predict(champion_model, split, "test")
    scores = score_predictions(champion_probabilities, labels, split.class_names)
    tests = paired_tests(
        probabilities,
        champion_probabilities,
        labels,
        split.class_names,
        gate.significance_level,
        gate.bootstrap_samples,
        seed,
    )
    logger.info(
        "Champion %s on the same test images: accuracy %.4f (%s), loss %.4f, macro F1 %.4f",
        champion.version,
        scores.accuracy,
        tests["accuracy"].describe(),
        scores.loss,
        scores.macro_f1,
    )
    note = f"compared with champion {champion.version} on the same test images"
    if caveat := split_note(champion, split):
        logger.warning("Note: %s", caveat)
        note += f"; {caveat}"
    return Evaluation(
        candidate=candidate,
        candidate_validation=validation,
        champion=scores,
        champion_version=champion.version,
        note=note,
        tests=tests,
        test_images=split.test_count,
        copies=alone.copies,
    )
