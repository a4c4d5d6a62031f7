"""The gate's rules: thresholds, change against the champion, the per-class guard, NaN, and
the paired tests that tell a real difference from noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrainer.evaluation import score_predictions
from retrainer.gating import decide
from retrainer.records import Evaluation, GateDecision, ModelScores
from retrainer.settings import GateSettings
from retrainer.significance import mcnemar_p_value, paired_tests

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


def judge(candidate: ModelScores, champion: ModelScores | None, **gate: object) -> GateDecision:
    evaluation = Evaluation(
        candidate=candidate, champion=champion, champion_version="v0" if champion else None
    )
    return decide(evaluation, GateSettings.model_validate(gate))


def test_first_model_is_judged_by_the_thresholds_alone() -> None:
    evaluation = Evaluation(candidate=scores(0.9), note="first model: no champion to beat")
    decision = decide(evaluation, GateSettings())
    assert decision.passed
    assert "no champion to beat" in decision.reason
    assert decision.reason.startswith("passed")


def test_below_the_absolute_threshold_is_rejected_naming_the_metric() -> None:
    decision = judge(scores(0.7), None)
    assert not decision.passed
    assert decision.reason == "rejected: test_accuracy 0.7000 < 0.8000"


def test_worse_than_the_champion_is_rejected_with_the_champion_in_the_sentence() -> None:
    decision = judge(scores(0.81), scores(0.86), reject_only_if_significantly_worse=False)
    assert not decision.passed
    assert "test_accuracy 0.8100 < champion 0.8600 - 0.0100" in decision.reason


def test_better_than_the_champion_passes() -> None:
    decision = judge(scores(0.9), scores(0.86))
    assert decision.passed
    assert "test_accuracy 0.9000 >= champion 0.8600 - 0.0100" in decision.reason


def test_required_improvement_is_enforced() -> None:
    decision = judge(scores(0.87), scores(0.86), accuracy={"min_improvement": 0.02})
    assert not decision.passed
    assert "test_accuracy 0.8700 < champion 0.8600 + 0.0200" in decision.reason


def test_loss_direction_is_lower_is_better() -> None:
    rules = {"loss": {"max_regression": 0.05, "threshold": 1.0}}
    plain = {"reject_only_if_significantly_worse": False}
    higher = judge(scores(0.9, loss=0.5), scores(0.9, loss=0.3), **rules, **plain)
    assert not higher.passed
    assert "test_loss 0.5000 > champion 0.3000 + 0.0500" in higher.reason
    assert judge(scores(0.9, loss=0.2), scores(0.9, loss=0.3), **rules, **plain).passed
    assert not judge(scores(0.9, loss=1.2), None, **rules).passed  # the threshold is a maximum


def test_a_class_whose_recall_collapses_is_caught_though_the_average_rises() -> None:
    decision = judge(
        scores(0.93, recall=(0.99, 0.7)),
        scores(0.9, recall=(0.9, 0.9)),
        reject_only_if_significantly_worse=False,
    )
    assert not decision.passed
    assert "recall[dog] 0.7000 < champion 0.9000 - 0.1000" in decision.reason


def test_nan_training_is_rejected_with_its_reason() -> None:
    nan = scores(math.nan, loss=math.nan)
    decision = decide(
        Evaluation(candidate=nan), GateSettings(), "the training loss became NaN in epoch 2"
    )
    assert not decision.passed
    assert decision.reason == "rejected: the training loss became NaN in epoch 2"


def predictions(right: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two-class probabilities that are right exactly where `right` says, confidently."""
    predicted = np.where(right, labels, 1 - labels)
    return np.eye(2)[predicted] * 0.8 + 0.1


def paired(candidate_right: list[bool], champion_right: list[bool]) -> GateDecision:
    """Gate a candidate against a champion from who got which test image right."""
    return paired_decision(np.array(candidate_right), np.array(champion_right))


def paired_decision(
    candidate_right: np.ndarray, champion_right: np.ndarray, **gate: object
) -> GateDecision:
    labels = np.arange(len(candidate_right)) % 2
    candidate = predictions(candidate_right, labels)
    champion = predictions(champion_right, labels)
    settings = GateSettings.model_validate(gate)
    tests = paired_tests(candidate, champion, labels, CLASSES, 0.05, 500, seed=7)
    evaluation = Evaluation(
        candidate=score_predictions(candidate, labels, CLASSES),
        champion=score_predictions(champion, labels, CLASSES),
        champion_version="v0",
        tests=tests,
        test_images=len(labels),
    )
    return decide(evaluation, settings)


def test_mcnemar_exact_p_value_of_known_discordant_pairs() -> None:
    # 12 discordant images, 10 to 2: p = 2 * P(X <= 2 | 12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert mcnemar_p_value(10, 2) == pytest.approx(158 / 4096)
    assert mcnemar_p_value(2, 10) == pytest.approx(158 / 4096)
    assert mcnemar_p_value(0, 0) == 1.0
    # The same from two fixed sets of predictions on 40 images (28 concordant).
    candidate_right = np.array([True] * 10 + [False] * 2 + [True] * 20 + [False] * 8)
    champion_right = np.array([False] * 10 + [True] * 2 + [True] * 20 + [False] * 8)
    labels = np.arange(40) % 2
    tests = paired_tests(
        predictions(candidate_right, labels),
        predictions(champion_right, labels),
        labels,
        CLASSES,
        0.05,
        500,
        seed=1,
    )
    accuracy = tests["accuracy"]
    assert accuracy.discordant == (10, 2)
    assert accuracy.p_value == pytest.approx(158 / 4096)
    assert accuracy.significantly_better and not accuracy.significantly_worse
    assert accuracy.difference == pytest.approx(8 / 40)


def test_better_by_one_image_on_a_small_set_is_not_called_significantly_better() -> None:
    champion_right = np.array([True] * 34 + [False] * 6)
    candidate_right = champion_right.copy()
    candidate_right[38] = True  # one more image right
    decision = paired_decision(
        candidate_right, champion_right, promote_only_if_significantly_better=True
    )
    (test,) = [test for test in decision.paired_tests if test.metric == "accuracy"]
    assert not test.significantly_better and test.p_value == pytest.approx(1.0)
    assert decision.reason == (
        "rejected: test_accuracy gain +0.0250 is not significant at p < 0.05 "
        "(McNemar p=1.0000 (1 vs 0 of 40))"
    )


def test_a_clearly_better_candidate_passes_even_when_significance_is_required() -> None:
    champion_right = np.array([True] * 60 + [False] * 40)
    candidate_right = np.array([True] * 95 + [False] * 5)
    decision = paired_decision(
        candidate_right, champion_right, promote_only_if_significantly_better=True
    )
    assert decision.passed, decision.reason


def test_a_drop_within_noise_passes_and_a_real_drop_is_rejected() -> None:
    champion_right = np.array([True] * 90 + [False] * 10)
    noisy = champion_right.copy()
    noisy[:3] = False  # three images worse on 100: beyond max_regression 0.01, not significant
    within_noise = paired_decision(noisy, champion_right)
    assert within_noise.passed, within_noise.reason
    assert any(check.within_noise for check in within_noise.checks)

    real = champion_right.copy()
    real[:25] = False  # twenty-five worse, none better: p far below 0.05
    rejected = paired_decision(real, champion_right)
    assert not rejected.passed
    assert "test_accuracy 0.6500 < champion 0.9000 - 0.0100 (McNemar p=" in rejected.reason


def test_too_small_to_judge_is_said_and_keeps_the_champion_or_falls_back() -> None:
    candidate_right = np.array([True] * 5)
    champion_right = np.array([False] * 5)
    kept = paired_decision(candidate_right, champion_right)
    assert not kept.passed
    assert "the test split has 5 image(s), too few for any difference to be significant" in (
        kept.reason
    )
    assert "the champion is kept" in kept.reason

    plain = paired_decision(candidate_right, champion_right, when_too_small="plain")
    assert plain.passed
    assert "judged by the plain thresholds" in plain.reason


def test_non_finite_predictions_score_nan_and_fail() -> None:
    result = score_predictions(np.full((2, 2), np.nan), np.array([0, 1]), CLASSES)
    assert math.isnan(result.accuracy)
    assert not judge(result, None).passed
