"""Gate: decide whether the candidate may replace the champion, and say why in one sentence.

Both are scored on the test split, which neither trained nor was selected on. Three kinds of
check, all settings: absolute thresholds per metric, change thresholds against the champion
(largest allowed regression, smallest required improvement, in the metric's own direction), and a
per-class recall guard so an average cannot hide a broken class. Each change check carries the
paired test of its difference (significance.py):

- with `reject_only_if_significantly_worse` (the default) a drop beyond the tolerance rejects
  only if it is also significant: on a small test split a drop of one or two images is noise;
- with `promote_only_if_significantly_better` the candidate's accuracy must be significantly
  better than the champion's (McNemar) to pass;
- a test split too small for any difference to be significant keeps the champion, or with
  `when_too_small=plain` falls back to the plain thresholds; the decision says which.
"""

from __future__ import annotations

import math

from retrainer.records import Evaluation, GateCheck, GateDecision, ModelScores, PairedTest
from retrainer.settings import GateSettings, MetricRule

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}


def _holds(value: float, bound: float, higher_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    return value >= bound if higher_is_better else value <= bound


def champion_check(
    metric: str,
    value: float,
    best: float,
    shift: float,
    higher_is_better: bool,
    test: PairedTest | None = None,
    forgive_noise: bool = False,
) -> GateCheck:
    """`value` against the champion's `best` moved by `shift`: "champion 0.8600 - 0.0100".

    With `forgive_noise`, a value beyond the bound still passes when the paired test does not
    call the candidate significantly worse.
    """
    bound = best + shift
    passed = _holds(value, bound, higher_is_better)
    within_noise = (
        not passed
        and forgive_noise
        and test is not None
        and not test.too_small
        and not test.significantly_worse
        and not math.isnan(value)
    )
    return GateCheck(
        metric=metric,
        value=value,
        threshold=bound,
        higher_is_better=higher_is_better,
        passed=passed or within_noise,
        champion_value=best,
        comparison=f"champion {best:.4f} {'+' if shift >= 0 else '-'} {abs(shift):.4f}",
        evidence=test.describe() if test else "",
        within_noise=within_noise,
    )


def metric_checks(
    metric: str,
    rule: MetricRule,
    candidate: ModelScores,
    champion: ModelScores | None,
    tests: dict[str, PairedTest],
    forgive_noise: bool,
) -> list[GateCheck]:
    higher = HIGHER_IS_BETTER[metric]
    name = f"test_{metric}"
    value = float(getattr(candidate, metric))
    checks = []
    if rule.threshold is not None:
        checks.append(
            GateCheck(
                metric=name,
                value=value,
                threshold=rule.threshold,
                higher_is_better=higher,
                passed=_holds(value, rule.threshold, higher),
            )
        )
    if champion is None:
        return checks
    best = float(getattr(champion, metric))
    test = tests.get(metric)
    # Regression allowed: the bound moves away from "better"; improvement required: towards it.
    towards_better = 1.0 if higher else -1.0
    if rule.max_regression is not None:
        shift = -towards_better * rule.max_regression
        checks.append(champion_check(name, value, best, shift, higher, test, forgive_noise))
    if rule.min_improvement is not None:
        shift = towards_better * rule.min_improvement
        checks.append(champion_check(name, value, best, shift, higher, test))
    return checks


def recall_checks(
    max_drop: float,
    candidate: ModelScores,
    champion: ModelScores,
    tests: dict[str, PairedTest],
    forgive_noise: bool,
) -> list[GateCheck]:
    return [
        champion_check(
            f"recall[{class_name}]",
            candidate.recall.get(class_name, 0.0),
            best,
            -max_drop,
            True,
            tests.get(f"recall[{class_name}]"),
            forgive_noise,
        )
        for class_name, best in champion.recall.items()
    ]


def significantly_better_check(test: PairedTest, level: float) -> GateCheck:
    """`promote_only_if_significantly_better`: the accuracy gain must be real."""
    verdict = "is" if test.significantly_better else "is not"
    return GateCheck(
        metric="test_accuracy gain",
        value=test.difference,
        threshold=0.0,
        higher_is_better=True,
        passed=test.significantly_better,
        evidence=test.describe(),
        statement=f"test_accuracy gain {test.difference:+.4f} {verdict} significant at "
        f"p < {level} ({test.describe()})",
    )


def decide(evaluation: Evaluation, gate: GateSettings, diverged: str | None = None) -> GateDecision:
    """Pass only if training did not diverge and every check holds."""
    candidate, champion, tests = evaluation.candidate, evaluation.champion, evaluation.tests
    test_images = evaluation.test_images
    too_small = (
        champion is not None
        and tests.get("accuracy", None) is not None
        and (tests["accuracy"].too_small)
    )
    significance = (
        ""
        if not too_small
        else f"the test split has {test_images} image(s), too few for any difference to be "
        f"significant at p < {gate.significance_level}"
    )
    # Judging by significance needs a test split that can show it.
    forgive_noise = gate.reject_only_if_significantly_worse and not too_small
    checks = []
    for metric, rule in gate.rules().items():
        checks += metric_checks(metric, rule, candidate, champion, tests, forgive_noise)
    if champion is not None and gate.max_class_recall_drop is not None:
        checks += recall_checks(
            gate.max_class_recall_drop, candidate, champion, tests, forgive_noise
        )
    if champion is not None and gate.promote_only_if_significantly_better and not too_small:
        checks.append(significantly_better_check(tests["accuracy"], gate.significance_level))

    failed = [check for check in checks if not check.passed]
    keep_champion = too_small and gate.when_too_small == "keep_champion"
    if diverged:
        reason = f"rejected: {diverged}"
    elif keep_champion:
        reason = (
            f"rejected: {significance}: the champion is kept (add images, raise "
            "RETRAINER_TEST_FRACTION, or set RETRAINER_GATE__WHEN_TOO_SMALL=plain)"
        )
    elif failed:
        reason = "rejected: " + "; ".join(check.describe() for check in failed)
    else:
        headline = [check.describe() for check in checks if check.metric == "test_accuracy"]
        reason = "passed: " + ", ".join(headline or ["every check"])
        if champion is None and evaluation.note:
            reason += f"; {evaluation.note}"
        if too_small:
            reason += f"; {significance}: judged by the plain thresholds"
    return GateDecision(
        passed=not failed and not diverged and not keep_champion,
        reason=reason,
        checks=checks,
        candidate=candidate,
        candidate_validation=evaluation.candidate_validation,
        champion=champion,
        champion_version=evaluation.champion_version,
        champion_note=evaluation.note,
        paired_tests=list(tests.values()),
        test_images=test_images,
        copies=evaluation.copies,
        significance_level=gate.significance_level,
    )
