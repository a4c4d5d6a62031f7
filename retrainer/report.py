"""The run report: one markdown page with the data, the metrics, the decision and the files."""

from __future__ import annotations

from retrainer.records import Batches, GateDecision, Publication, TrainedModel


def run_report(
    batches: Batches, trained: TrainedModel, decision: GateDecision, publication: Publication
) -> str:
    verdict = "promoted to champion" if publication.promoted else "not promoted"
    lines = [
        f"# Retrain of `{publication.model_name}`: {verdict}",
        "",
        f"**Decision:** {decision.reason}",
        "",
        f"**Version:** `{publication.version}` at `{publication.version_url}`",
        "",
        f"**Device:** {trained.device}; {trained.epochs_run} epochs",
        "",
        "| check | candidate | rule | threshold | result |",
        "|---|---|---|---|---|",
    ]
    for check in decision.checks:
        result = "pass" if check.passed else "FAIL"
        lines.append(
            f"| {check.metric} | {check.value:.4f} | {check.rule} | {check.threshold:.4f} "
            f"| {result} |"
        )
    lines += [
        "",
        f"Data: {batches.train_count} training and {batches.validation_count} validation "
        f"images in {len(batches.class_names)} classes, fingerprint "
        f"`{batches.data_fingerprint[:12]}`.",
        "",
        "Files: " + ", ".join(f"`{name}`" for name in publication.files),
        "",
        publication.message,
    ]
    return "\n".join(lines)
