"""The run report: one markdown page with the data, candidate versus champion, the decision."""

from __future__ import annotations

import base64
import re

from retrainer.records import (
    Batches,
    GateDecision,
    ModelScores,
    Publication,
    TrainedModel,
    ValidatedData,
)


def artifact_key(model_name: str) -> str:
    """The key of a model's run reports in Prefect: lower-case letters, digits and dashes only."""
    return "retrain-" + re.sub(r"[^a-z0-9-]", "-", model_name)


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def metrics_table(candidate: ModelScores, champion: ModelScores | None) -> list[str]:
    lines = ["| metric | candidate | champion | change |", "|---|---|---|---|"]
    rows = [
        (name, value, champion.headline()[name] if champion else None)
        for name, value in candidate.headline().items()
    ]
    rows += [
        (f"recall[{name}]", value, champion.recall.get(name) if champion else None)
        for name, value in candidate.recall.items()
    ]
    for name, value, best in rows:
        change = "-" if best is None else f"{value - best:+.4f}"
        lines.append(f"| {name} | {_format(value)} | {_format(best)} | {change} |")
    return lines


def checks_table(decision: GateDecision) -> list[str]:
    lines = ["| check | result |", "|---|---|"]
    lines += [
        f"| {check.describe()} | {'pass' if check.passed else '**FAIL**'} |"
        for check in decision.checks
    ]
    return lines


def run_report(
    data: ValidatedData,
    batches: Batches,
    trained: TrainedModel,
    decision: GateDecision,
    publication: Publication,
    images: dict[str, bytes],
) -> str:
    verdict = "promoted to champion" if publication.promoted else "not promoted"
    counts = ", ".join(f"{name}: {count}" for name, count in data.images_per_class.items())
    lines = [
        f"# Retrain of `{publication.model_name}`: {verdict}",
        "",
        f"**Decision:** {decision.reason}",
        "",
        publication.message,
        "",
        f"**Champion comparison:** {decision.champion_note}",
        "",
        "## Candidate versus champion (same validation images)",
        "",
        *metrics_table(decision.candidate, decision.champion),
        "",
        "## Gate checks",
        "",
        *checks_table(decision),
        "",
        "## Data",
        "",
        f"{batches.train_count} training and {batches.validation_count} validation images; "
        f"per class: {counts}. Fingerprint `{batches.data_fingerprint[:12]}`.",
        f"{len(data.quarantined)} file(s) quarantined"
        + "".join(f"\n- `{item.path}`: {item.reason}" for item in data.quarantined[:20]),
        f"{len(data.snapshot.refused)} object key(s) refused (they would leave the cache)"
        + "".join(f"\n- `{key}`" for key in data.snapshot.refused[:20]),
        f"Classes: {data.class_change}" if data.class_change else "",
        "",
        "## Training",
        "",
        f"{trained.device}; {trained.epochs_run} epochs"
        + (f"; stopped early: {trained.stopped_reason}" if trained.stopped_reason else ""),
        "",
        f"## Files in `{publication.version_url}`",
        "",
        *[f"- `{name}`" for name in publication.files],
    ]
    for name, png in images.items():
        encoded = base64.b64encode(png).decode()
        lines += ["", f"![{name}](data:image/png;base64,{encoded})"]
    return "\n".join(lines)
