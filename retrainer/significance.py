"""Is the difference real? Paired tests of candidate against champion on the same test images.

Both models predict every test image, so each image is a pair of outcomes:
- accuracy, and each class's recall (accuracy within the class), use McNemar's exact test on the
  discordant pairs: images one model gets right and the other wrong. Under "no difference" each
  discordant image is a fair coin; the two-sided p-value is the binomial tail of the split seen.
- macro F1 and loss use a seeded paired bootstrap: the test images are resampled with replacement
  and both models scored on each resample; the interval is the central 1 - level of the differences.

A difference is significant when p < level (McNemar) or the interval excludes 0 (bootstrap). With
n images the smallest two-sided McNemar p-value is 2 * 0.5**n, so below a few images no difference
can ever be significant: `too_small` says so rather than guessing.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest

from retrainer.records import PairedTest

BOOTSTRAP_CHUNK = 100  # resamples scored at once: memory stays flat for large test splits
EPSILON = 1e-7  # as in evaluation: one confident mistake costs a large finite loss


def smallest_significant_sample(level: float) -> int:
    """The fewest paired images for which a two-sided p below `level` is possible at all."""
    return math.ceil(math.log2(2 / level))


def mcnemar_p_value(candidate_only: int, champion_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (1.0 when there are none)."""
    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    return float(binomtest(candidate_only, discordant, 0.5).pvalue)


def mcnemar_test(
    metric: str, candidate_right: np.ndarray, champion_right: np.ndarray, level: float
) -> PairedTest:
    """Accuracy (or recall, on one class's images): candidate minus champion, with McNemar's p."""
    images = len(candidate_right)
    candidate_only = int(np.sum(candidate_right & ~champion_right))
    champion_only = int(np.sum(~candidate_right & champion_right))
    p_value = mcnemar_p_value(candidate_only, champion_only)
    significant = p_value < level
    return PairedTest(
        metric=metric,
        difference=(candidate_only - champion_only) / images if images else 0.0,
        method="mcnemar",
        p_value=p_value,
        images=images,
        discordant=(candidate_only, champion_only),
        significantly_better=significant and candidate_only > champion_only,
        significantly_worse=significant and champion_only > candidate_only,
        too_small=images < smallest_significant_sample(level),
    )


def _macro_f1(weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro F1 of each resample; `weights[r, i]` counts image i in resample r."""
    true_positive = weights @ (truth * predicted)
    denominator = weights @ predicted + weights @ truth
    per_class = np.divide(
        2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    return np.asarray(per_class.mean(axis=1))


def bootstrap_tests(
    candidate: np.ndarray,
    champion: np.ndarray,
    labels: np.ndarray,
    level: float,
    samples: int,
    seed: int,
) -> list[PairedTest]:
    """Macro F1 and loss: candidate minus champion, with seeded paired bootstrap intervals."""
    images, classes = candidate.shape
    truth = np.eye(classes)[labels]
    predicted = {
        "candidate": np.eye(classes)[candidate.argmax(1)],
        "champion": np.eye(classes)[champion.argmax(1)],
    }
    losses = {
        name: -np.log(np.clip(probabilities[np.arange(images), labels], EPSILON, 1.0))
        for name, probabilities in (("candidate", candidate), ("champion", champion))
    }
    random = np.random.default_rng(seed)
    f1_differences, loss_differences = [], []
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, samples - start)
        draws = random.integers(0, images, size=(count, images))
        weights = np.zeros((count, images))
        np.add.at(weights, (np.arange(count)[:, None], draws), 1.0)
        f1_differences.append(
            _macro_f1(weights, truth, predicted["candidate"])
            - _macro_f1(weights, truth, predicted["champion"])
        )
        loss_differences.append(weights @ (losses["candidate"] - losses["champion"]) / images)
    full = np.ones((1, images))
    observed = {
        "macro_f1": float(
            (
                _macro_f1(full, truth, predicted["candidate"])
                - _macro_f1(full, truth, predicted["champion"])
            )[0]
        ),
        "loss": float(np.mean(losses["candidate"] - losses["champion"])),
    }
    tests = []
    for metric, differences, higher_is_better in (
        ("macro_f1", np.concatenate(f1_differences), True),
        ("loss", np.concatenate(loss_differences), False),
    ):
        low, high = (float(value) for value in np.quantile(differences, [level / 2, 1 - level / 2]))
        above, below = low > 0, high < 0
        tests.append(
            PairedTest(
                metric=metric,
                difference=observed[metric],
                method="bootstrap",
                interval=(low, high),
                images=images,
                significantly_better=above if higher_is_better else below,
                significantly_worse=below if higher_is_better else above,
                too_small=images < smallest_significant_sample(level),
            )
        )
    return tests


def paired_tests(
    candidate: np.ndarray,
    champion: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    level: float,
    samples: int,
    seed: int,
) -> dict[str, PairedTest]:
    """Every paired test the gate may use, keyed by metric: accuracy, macro_f1, loss, recall[c]."""
    candidate_right = candidate.argmax(1) == labels
    champion_right = champion.argmax(1) == labels
    tests = [mcnemar_test("accuracy", candidate_right, champion_right, level)]
    tests += bootstrap_tests(candidate, champion, labels, level, samples, seed)
    for index, name in enumerate(class_names):
        mine = labels == index
        tests.append(
            mcnemar_test(f"recall[{name}]", candidate_right[mine], champion_right[mine], level)
        )
    return {test.metric: test for test in tests}
