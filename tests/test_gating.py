"""The gate's rules: thresholds, change against the champion, the per-class guard, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrainer.evaluation import score_predictions
from retrainer.gating import decide
from retrainer.records import ModelScores
from retrainer.settings import GateSettings

CLASSES = ["cat", "dog"]


def scores(
    accuracy: float, loss: float = 0.3, recall: tuple[float, float] = (0.9, 0.9)
) -> ModelScores:
    return ModelScores(
        loss=loss,
        accuracy=accuracy,
        macro_f1=accuracy,
        precision=dict(zip(CLASSES, recall, strict=True)),
        recall=dict(zip(CLASSES, recall, strict=True)),
        confusion_matrix=[[9, 1], [1, 9]],
    )


def judge(candidate: ModelScores, champion: ModelScores | None, **gate: object) -> object:
    return decide(
        candidate, champion, GateSettings.model_validate(gate), "v0" if champion else None, None
    )


def test_first_model_is_judged_by_the_thresholds_alone() -> None:
    decision = decide(
        scores(0.9), None, GateSettings(), None, None, "first model: no champion to beat"
    )
    assert decision.passed
    assert "no champion to beat" in decision.reason
    assert decision.reason.startswith("passed")


def test_below_the_absolute_threshold_is_rejected_naming_the_metric() -> None:
    decision = judge(scores(0.7), None)
    assert not decision.passed
    assert decision.reason == "rejected: val_accuracy 0.7000 < 0.8000"


def test_worse_than_the_champion_is_rejected_with_the_champion_in_the_sentence() -> None:
    decision = judge(scores(0.81), scores(0.86))
    assert not decision.passed
    assert "val_accuracy 0.8100 < champion 0.8600 - 0.0100" in decision.reason


def test_better_than_the_champion_passes() -> None:
    decision = judge(scores(0.9), scores(0.86))
    assert decision.passed
    assert "val_accuracy 0.9000 >= champion 0.8600 - 0.0100" in decision.reason


def test_required_improvement_is_enforced() -> None:
    decision = judge(scores(0.87), scores(0.86), accuracy={"min_improvement": 0.02})
    assert not decision.passed
    assert "val_accuracy 0.8700 < champion 0.8600 + 0.0200" in decision.reason


def test_loss_direction_is_lower_is_better() -> None:
    rules = {"loss": {"max_regression": 0.05, "threshold": 1.0}}
    assert not judge(scores(0.9, loss=0.5), scores(0.9, loss=0.3), **rules).passed
    decision = judge(scores(0.9, loss=0.5), scores(0.9, loss=0.3), **rules)
    assert "val_loss 0.5000 > champion 0.3000 + 0.0500" in decision.reason
    assert judge(scores(0.9, loss=0.2), scores(0.9, loss=0.3), **rules).passed


def test_a_class_whose_recall_collapses_is_caught_though_the_average_rises() -> None:
    decision = judge(scores(0.93, recall=(0.99, 0.7)), scores(0.9, recall=(0.9, 0.9)))
    assert not decision.passed
    assert "recall[dog] 0.7000 < champion 0.9000 - 0.1000" in decision.reason


def test_nan_training_is_rejected_with_its_reason() -> None:
    nan = scores(math.nan, loss=math.nan)
    decision = decide(
        nan,
        None,
        GateSettings(),
        None,
        None,
        stopped_reason="the training loss became NaN in epoch 2",
    )
    assert not decision.passed
    assert decision.reason == "rejected: the training loss became NaN in epoch 2"


def test_scores_from_predictions() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    result = score_predictions(probabilities, labels, CLASSES)
    assert result.accuracy == pytest.approx(0.75)
    assert result.recall == {"cat": 1.0, "dog": pytest.approx(2 / 3)}
    assert result.precision == {"cat": 0.5, "dog": 1.0}
    assert result.confusion_matrix == [[1, 0], [1, 2]]
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert result.loss == pytest.approx(expected_loss)
    assert result.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


def test_non_finite_predictions_score_nan_and_fail() -> None:
    result = score_predictions(np.full((2, 2), np.nan), np.array([0, 1]), CLASSES)
    assert math.isnan(result.accuracy)
    assert not judge(result, None).passed
