"""The run report: one markdown page with the data, candidate versus champion, the decision."""

from __future__ import annotations

import base64
import re

from retrainer.records import (
    DataSplit,
    GateDecision,
    ModelScores,
    Publication,
    TrainedModel,
    ValidatedData,
)


def artifact_key(model_name: str) -> str:
    """The key of a model's run reports in Prefect: lower-case letters, digits and dashes only."""
    return "retrain-" + re.sub(r"[^a-z0-9-]", "-", model_name)


LISTED_AT_MOST = 100


def listed(items: list[tuple[str, str]]) -> str:
    """`- `key`: reason` lines, the first LISTED_AT_MOST; the log has every one."""
    lines = "".join(f"\n- `{name}`: {reason}" for name, reason in items[:LISTED_AT_MOST])
    if len(items) > LISTED_AT_MOST:
        lines += f"\n- and {len(items) - LISTED_AT_MOST} more (each is in the run's log)"
    return lines


def skipped_report(skipped: Publication) -> str:
    return f"# Retrain of `{skipped.model_name}`: skipped\n\n{skipped.message}"


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _figures(scores: ModelScores | None) -> dict[str, float]:
    """Every figure of the table, by row name: the three metrics, then each class's recall."""
    if scores is None:
        return {}
    recalls = {f"recall[{name}]": value for name, value in scores.recall.items()}
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "loss": scores.loss} | (
        recalls
    )


def metrics_table(decision: GateDecision) -> list[str]:
    """Candidate on validation (chosen on it) and test (never seen) beside the champion on test."""
    test = _figures(decision.candidate)
    validation = _figures(decision.candidate_validation)
    champion = _figures(decision.champion)
    evidence = {paired.metric: paired.describe() for paired in decision.paired_tests}
    lines = [
        "| metric | candidate, validation | candidate, test | champion, test | change | "
        "is it real? |",
        "|---|---|---|---|---|---|",
    ]
    for name, value in test.items():
        best = champion.get(name)
        change = "-" if best is None else f"{value - best:+.4f}"
        lines.append(
            f"| {name} | {_format(validation.get(name))} | {_format(value)} | {_format(best)} "
            f"| {change} | {evidence.get(name, '-')} |"
        )
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
    split: DataSplit,
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
        f"## Candidate versus champion ({decision.test_images} test images, seen by neither)",
        "",
        f"Copies of one photograph: {decision.copies}." if decision.copies else "",
        "The validation figure is the one early stopping chose the candidate on: the gap to "
        "its test figure is that choice's optimism.",
        "",
        *metrics_table(decision),
        "",
        "## Gate checks",
        "",
        *checks_table(decision),
        "",
        "## Data",
        "",
        f"{split.train_count} training, {split.validation_count} validation and "
        f"{split.test_count} test images; "
        f"per class: {counts}. Fingerprint `{split.data_fingerprint[:12]}`.",
        f"{len(data.quarantined)} file(s) quarantined"
        + listed([(item.path, item.reason) for item in data.quarantined]),
        f"{len(data.label_conflicts)} label conflict(s): one photograph under several classes"
        + listed(
            [
                (
                    ", ".join(conflict.keys),
                    f"{' and '.join(conflict.classes)}, "
                    + ("quarantined" if conflict.quarantined else "trained as labelled"),
                )
                for conflict in data.label_conflicts
            ]
        ),
        f"{len(data.prepared.refused)} object(s) refused"
        + listed([(item.key, item.reason) for item in data.prepared.refused]),
        f"Classes: {data.class_change}" if data.class_change else "",
        "",
        "## Training",
        "",
        f"{trained.device}; {trained.epochs_run} epochs"
        + ("; stopped early (the best epoch's weights kept)" if trained.stopped_early else "")
        + (f"; diverged: {trained.diverged}" if trained.diverged else ""),
        "",
        f"## Files in `{publication.version_url}`",
        "",
        *[f"- `{name}`" for name in publication.files],
    ]
    for name, png in images.items():
        encoded = base64.b64encode(png).decode()
        lines += ["", f"![{name}](data:image/png;base64,{encoded})"]
    return "\n".join(lines)
