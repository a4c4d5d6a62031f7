"""Gate: decide from the candidate's validation metrics whether it may become champion."""

from __future__ import annotations

import math

from retrainer.records import GateCheck, GateDecision
from retrainer.settings import GateSettings


def threshold_checks(metrics: dict[str, float], gate: GateSettings) -> list[GateCheck]:
    """The absolute thresholds; a missing or NaN metric fails its check."""
    rules = [("val_accuracy", ">=", gate.min_accuracy)]
    if gate.max_loss is not None:
        rules.append(("val_loss", "<=", gate.max_loss))
    checks = []
    for metric, rule, threshold in rules:
        value = metrics.get(metric, math.nan)
        passed = not math.isnan(value) and (
            value >= threshold if rule == ">=" else value <= threshold
        )
        checks.append(
            GateCheck(metric=metric, value=value, threshold=threshold, rule=rule, passed=passed)
        )
    return checks


def decide(
    metrics: dict[str, float],
    gate: GateSettings,
    champion_version: str | None,
    champion_etag: str | None,
    stopped_reason: str | None = None,
) -> GateDecision:
    """Pass only if training finished cleanly and every check holds; say why in one sentence."""
    checks = threshold_checks(metrics, gate)
    failed = [check for check in checks if not check.passed]
    if stopped_reason:
        reason = f"rejected: {stopped_reason}"
    elif failed:
        reason = "rejected: " + "; ".join(
            f"{check.metric} {check.value:.4f} is not {check.rule} {check.threshold:.4f}"
            for check in failed
        )
    else:
        reason = "passed: " + ", ".join(
            f"{check.metric} {check.value:.4f} {check.rule} {check.threshold:.4f}"
            for check in checks
        )
        if champion_version is None:
            reason += " (first model: no champion to beat)"
    return GateDecision(
        passed=not failed and not stopped_reason,
        reason=reason,
        checks=checks,
        champion_version=champion_version,
        champion_etag=champion_etag,
    )
