"""Gate: decide whether the candidate may replace the champion, and say why in one sentence.

Three kinds of check, all settings: absolute thresholds per metric, change thresholds against the
champion on the same images (largest allowed regression, smallest required improvement, in the
metric's own direction), and a per-class recall guard so an average cannot hide a broken class.
"""

from __future__ import annotations

import math

from retrainer.records import GateCheck, GateDecision, ModelScores
from retrainer.settings import GateSettings, MetricRule

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False}


def _holds(value: float, bound: float, higher_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    return value >= bound if higher_is_better else value <= bound


def metric_checks(
    metric: str, rule: MetricRule, candidate: ModelScores, champion: ModelScores | None
) -> list[GateCheck]:
    higher = HIGHER_IS_BETTER[metric]
    name = f"val_{metric}"
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
    # Regression allowed: the bound moves away from "better"; improvement required: towards it.
    towards_better = 1.0 if higher else -1.0
    shifts = []
    if rule.max_regression is not None:
        shifts.append(-towards_better * rule.max_regression)
    if rule.min_improvement is not None:
        shifts.append(towards_better * rule.min_improvement)
    checks += [champion_check(name, value, best, shift, higher) for shift in shifts]
    return checks


def champion_check(
    metric: str, value: float, best: float, shift: float, higher_is_better: bool
) -> GateCheck:
    """`value` against the champion's `best` moved by `shift`: "champion 0.8600 - 0.0100"."""
    bound = best + shift
    return GateCheck(
        metric=metric,
        value=value,
        threshold=bound,
        higher_is_better=higher_is_better,
        passed=_holds(value, bound, higher_is_better),
        champion_value=best,
        comparison=f"champion {best:.4f} {'+' if shift >= 0 else '-'} {abs(shift):.4f}",
    )


def recall_checks(
    max_drop: float, candidate: ModelScores, champion: ModelScores
) -> list[GateCheck]:
    return [
        champion_check(
            f"recall[{class_name}]", candidate.recall.get(class_name, 0.0), best, -max_drop, True
        )
        for class_name, best in champion.recall.items()
    ]


def decide(
    candidate: ModelScores,
    champion: ModelScores | None,
    gate: GateSettings,
    champion_version: str | None,
    champion_etag: str | None,
    champion_note: str = "",
    stopped_reason: str | None = None,
) -> GateDecision:
    """Pass only if training finished cleanly and every check holds."""
    checks = []
    for metric, rule in gate.rules().items():
        checks += metric_checks(metric, rule, candidate, champion)
    if champion is not None and gate.max_class_recall_drop is not None:
        checks += recall_checks(gate.max_class_recall_drop, candidate, champion)

    failed = [check for check in checks if not check.passed]
    if stopped_reason:
        reason = f"rejected: {stopped_reason}"
    elif failed:
        reason = "rejected: " + "; ".join(check.describe() for check in failed)
    else:
        headline = [check.describe() for check in checks if check.metric == "val_accuracy"]
        reason = "passed: " + ", ".join(headline or ["every check"])
        if champion is None and champion_note:
            reason += f"; {champion_note}"
    return GateDecision(
        passed=not failed and not stopped_reason,
        reason=reason,
        checks=checks,
        candidate=candidate,
        champion=champion,
        champion_version=champion_version,
        champion_etag=champion_etag,
        champion_note=champion_note,
    )
