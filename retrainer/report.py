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


def artifact_key(model_name: str, kind: str = "retrain") -> str:
    """The key of a model's artifacts of one kind in Prefect (its run reports, "retrain", or its
    data summaries, "data-summary"): one history per model; lower-case, digits and dashes only."""
    return f"{kind}-" + re.sub(r"[^a-z0-9-]", "-", model_name)


LISTED_AT_MOST = 100


def listed(items: list[tuple[str, str]]) -> str:
    """`- `key`: reason` lines, the first LISTED_AT_MOST; the log has every one."""
    lines = "".join(f"\n- `{name}`: {reason}" for name, reason in items[:LISTED_AT_MOST])
    if len(items) > LISTED_AT_MOST:
        lines += f"\n- and {len(items) - LISTED_AT_MOST} more (each is in the run's log)"
    return lines


def skipped_report(skipped: Publication) -> str:
    return f"# `{skipped.model_name}`: {skipped.outcome}\n\n{skipped.message}"


def failed_report(model_name: str, problem: str, listed_per_class: dict[str, int] | None) -> str:
    """A night stopped by something a person must fix: what, and what the listing held."""
    lines = [f"# `{model_name}`: Failed", "", problem]
    if listed_per_class is not None:
        counts = ", ".join(f"{name}: {count}" for name, count in listed_per_class.items())
        total = sum(listed_per_class.values())
        lines += ["", f"Listed: {total} file(s) in {len(listed_per_class)} folder(s) ({counts})."]
    return "\n".join(lines)


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
    """The candidate and the champion on the same test images, and whether each change is real."""
    test = _figures(decision.candidate)
    champion = _figures(decision.champion)
    evidence = {paired.metric: paired.in_words() for paired in decision.paired_tests}
    lines = [
        "| metric | candidate | champion | change | is it real? |",
        "|---|---|---|---|---|",
    ]
    for name, value in test.items():
        best = champion.get(name)
        change = "-" if best is None else f"{value - best:+.4f}"
        lines.append(
            f"| {name} | {_format(value)} | {_format(best)} | {change} "
            f"| {evidence.get(name, '-')} |"
        )
    return lines


def validation_line(decision: GateDecision) -> str:
    """The candidate's figures on the images early stopping chose it on: optimistic by design."""
    validation = _figures(decision.candidate_validation)
    if not validation:
        return ""
    shown = ", ".join(f"{name} {validation[name]:.4f}" for name in ("accuracy", "macro_f1"))
    return (
        f"On validation, where early stopping chose it, the candidate scored {shown}: "
        "the gap to its test figures is that choice's optimism."
    )


def checks_table(decision: GateDecision) -> list[str]:
    lines = ["| check | result |", "|---|---|"]
    lines += [
        f"| {check.describe()} | {'pass' if check.passed else '**FAIL**'} |"
        for check in decision.checks
    ]
    return lines


def evidence_in_words(decision: GateDecision) -> str:
    """How to read "is it real?", said once under the table with this run's own numbers; nothing
    when there is no champion to compare with."""
    mcnemar = next(
        (test for test in decision.paired_tests if test.method == "mcnemar" and test.discordant),
        None,
    )
    if not decision.paired_tests:
        return ""
    example = ""
    if mcnemar is not None and mcnemar.discordant is not None:
        only_candidate, only_champion = mcnemar.discordant
        example = (
            f" (for {mcnemar.metric} here, *{only_candidate} vs {only_champion} images*: only the "
            f"candidate got {only_candidate} right, only the champion {only_champion})"
        )
    return (
        "*Is it real?* Accuracy and recall: McNemar's test on the images only one of the two "
        f"models got right{example}. Macro F1 and loss: the range 95% of bootstrap resamples of "
        "the test images fall in. *Could be chance*: a difference that size comes from luck alone "
        "more than 5% of the time."
    )


def training_lines(trained: TrainedModel, stage_seconds: dict[str, float]) -> list[str]:
    """How training went, in the order a person asks: where, from what, how long, how far."""
    if trained.diverged:
        ending = f"diverged: {trained.diverged}"
    elif trained.kept_epoch <= 1 < trained.epochs_run:
        # Nothing after the first epoch helped: not convergence, and for a warm start perhaps no
        # gain over the champion it started from (the gate compares the two).
        ending = (
            f"no epoch after the first improved val_loss in {trained.epochs_run}: the first "
            "epoch's weights are kept"
        )
    elif trained.stopped_early:
        ending = "converged: early stopping ended it, val_loss no longer improved"
    elif trained.still_improving:
        ending = (
            "still improving: val_loss was at its best in the last epoch (more epochs may help)"
        )
    else:
        ending = "converged: val_loss stopped improving before the last epoch"
    speed = (
        f"{trained.images_per_second:,.0f} training images/s through fit (validation included)"
        if trained.images_per_second
        else "-"
    )
    if trained.input_images_per_second is None:
        feed = "the training images were held in memory: fit did not wait for them"
    else:
        feed = (
            f"the shards streamed at {trained.input_images_per_second:,.0f} images/s on this "
            "node without a model"
        )
        if trained.images_per_second and (
            trained.input_images_per_second < 1.2 * trained.images_per_second
        ):
            feed += ": training waited for its input (more CPU cores would speed it up)"
    resumed = (
        f" (resumed after epoch {trained.resumed_from_epoch})" if trained.resumed_from_epoch else ""
    )
    stages = ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in stage_seconds.items())
    facts = {
        "Model": trained.model_description or "-",
        "Device": trained.device,
        "Started from": trained.started_from,
        "Epochs": f"{trained.epochs_run} run{resumed}; the weights of epoch {trained.kept_epoch} "
        "kept",
        "How it ended": ending,
        "Speed": speed,
        "Input": feed,
        "Seconds per stage": stages or "-",
    }
    return [f"- **{name}:** {value}" for name, value in facts.items()]


def run_report(
    data: ValidatedData,
    split: DataSplit,
    trained: TrainedModel,
    decision: GateDecision,
    publication: Publication,
    images: dict[str, bytes],
    stage_seconds: dict[str, float],
) -> str:
    """The outcome once, then training, the comparison, the data and the files."""
    counts = ", ".join(f"{name}: {count}" for name, count in data.images_per_class.items())
    lines = [
        f"# `{publication.model_name}`: {publication.outcome}",
        "",
        publication.message,
        "",
        "## Training",
        "",
        *training_lines(trained, stage_seconds),
        "",
        f"## Candidate versus champion ({decision.test_images} test images, seen by neither)",
        "",
        decision.champion_note,
        "",
        f"Copies of one photograph: {decision.copies}." if decision.copies else "",
        *metrics_table(decision),
        "",
        evidence_in_words(decision),
        "",
        validation_line(decision),
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
        "## Files",
        "",
        f"In `{publication.version_url}`:",
        "",
        *[f"- `{name}`" for name in publication.files],
    ]
    for name, png in images.items():
        encoded = base64.b64encode(png).decode()
        lines += ["", f"![{name}](data:image/png;base64,{encoded})"]
    return "\n".join(lines)
