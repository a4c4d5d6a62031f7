"""Publishing's outcomes and the run report people read in the Prefect UI."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from prefect import flow, task

from retrainer.errors import BadInput
from retrainer.evaluation import score_predictions
from retrainer.gating import decide
from retrainer.publishing import promote_if_passed
from retrainer.records import (
    Evaluation,
    GateDecision,
    LabelConflict,
    Publication,
    QuarantinedFile,
    RefusedObject,
)
from retrainer.registry import ModelRegistry
from retrainer.report import run_report, training_lines
from retrainer.settings import GateSettings
from retrainer.significance import paired_tests
from retrainer.storage import LocalStore
from tasks.retries import retry_unless_bad_input
from tests import records
from tests.conftest import publish_stub_version

CLASSES = ["cat", "dog"]
PNG = b"\x89PNG not really"


def a_decision(champion_version: str | None = "v1") -> GateDecision:
    labels = np.arange(100) % 2
    candidate = np.eye(2)[np.where(np.arange(100) < 95, labels, 1 - labels)] * 0.8 + 0.1
    champion = np.eye(2)[np.where(np.arange(100) < 85, labels, 1 - labels)] * 0.8 + 0.1
    evaluation = Evaluation(
        candidate=score_predictions(candidate, labels, CLASSES),
        candidate_validation=score_predictions(candidate, labels, CLASSES),
        champion=score_predictions(champion, labels, CLASSES),
        champion_version=champion_version,
        note="compared with champion v1 on the same test images",
        tests=paired_tests(candidate, champion, labels, CLASSES, 0.05, 200, seed=0),
        test_images=100,
    )
    return decide(evaluation, GateSettings())


def unpromoted(version: str) -> Publication:
    return Publication(
        status="rejected",
        model_name="m",
        version=version,
        version_url=f"file:///store/models/m/versions/{version}/",
        files=["model.keras", "training_curves.png", "manifest.json"],
        champion_version="v1",
        message=f"version {version} ...; champion unchanged",
    )


def test_a_passing_candidate_whose_champion_moved_meanwhile_ends_in_conflict(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path), "m")
    for version in ("v1", "v2", "v3"):
        publish_stub_version(registry, version, {"model.keras": b"w"}, CLASSES)
    registry.promote("v1", "run-1", "passed", None)
    read_by_both = registry.read_champion_record()  # its ETag guards each promotion
    decision = a_decision("v1")
    assert decision.passed

    first = promote_if_passed(registry, unpromoted("v2"), decision, read_by_both, "run-2")
    second = promote_if_passed(registry, unpromoted("v3"), decision, read_by_both, "run-3")

    assert first.status == "promoted" and first.champion_version == "v2"
    assert second.status == "conflict"
    assert second.champion_version == "v2"
    assert "changed by another run" in second.message and "v3 stays published" in second.message


def test_the_run_report_opens_with_the_outcome_once_then_training_comparison_data_and_plots() -> (
    None
):
    copies = "2 test image(s) left out of the gate: a copy of each trained before it came"
    decision = a_decision().model_copy(update={"copies": copies})
    refused = [RefusedObject(key="../escape.png", reason="has an empty, '.' or '..' component")]
    conflict = LabelConflict(keys=["cat/1.jpg", "dog/1.jpg"], classes=CLASSES, quarantined=True)
    data = records.validated_data(
        prepared=records.prepared_data(refused=refused),
        quarantined=[QuarantinedFile(path="dog/broken.jpg", reason="does not decode")],
        label_conflicts=[conflict],
    )
    data_split = records.data_split()
    trained = records.trained_model(
        started_from="champion v1", epochs_run=7, kept_epoch=4, stopped_early=True
    )
    published = unpromoted("v2").model_copy(update={"status": "promoted"})
    stages = {"list data": 0.4, "prepare dataset": 12.3, "train model": 61.0}

    report = run_report(data, data_split, trained, decision, published, {"curves.png": PNG}, stages)

    title, _, first_line, *_ = report.splitlines()
    assert (title, first_line) == ("# `m`: Promoted", published.message)
    assert report.count(decision.reason) <= 1  # the decision is said once, in the message
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert [section.split(" (")[0] for section in sections] == [
        "## Training",
        "## Candidate versus champion",
        "## Gate checks",
        "## Data",
        "## Files",
    ]
    assert "- **Device:** No GPU found: training on the CPU (float32)\n" in report
    assert "- **Started from:** champion v1\n" in report
    assert "- **Epochs:** 7 run; the weights of epoch 4 kept\n" in report
    assert "- **How it ended:** converged: early stopping ended it" in report
    assert "- **Speed:** 850 training images/s through fit" in report
    assert "- **Seconds per stage:** list data 0, prepare dataset 12, train model 61" in report
    assert "| accuracy | 0.9500 | 0.8500 | +0.1000 | better, not chance (" in report
    assert "| recall[dog] |" in report and "(95%: " in report
    (accuracy,) = [test for test in decision.paired_tests if test.metric == "accuracy"]
    assert accuracy.discordant is not None
    only_candidate, only_champion = accuracy.discordant
    assert f"*{only_candidate} vs {only_champion} images*: only the candidate got" in report
    assert "On validation, where early stopping chose it, the candidate scored accuracy" in report
    assert "130 training, 30 validation and 40 test images" in report
    assert "- `dog/broken.jpg`: does not decode" in report
    assert "- `../escape.png`: has an empty, '.' or '..' component" in report
    assert f"Copies of one photograph: {copies}." in report
    assert "1 label conflict(s)" in report
    assert "- `cat/1.jpg, dog/1.jpg`: cat and dog, quarantined" in report
    encoded = base64.b64encode(PNG).decode()
    assert f"![curves.png](data:image/png;base64,{encoded})" in report


def test_the_report_says_when_training_waited_for_its_input() -> None:
    held = records.trained_model(images_per_second=850.0, input_images_per_second=None)
    (line,) = [line for line in training_lines(held, {}) if "**Input:**" in line]
    assert "held in memory: fit did not wait for them" in line
    waiting = held.model_copy(update={"input_images_per_second": 900.0})
    (line,) = [line for line in training_lines(waiting, {}) if "**Input:**" in line]
    assert "streamed at 900 images/s" in line and "training waited for its input" in line
    fed = held.model_copy(update={"input_images_per_second": 8000.0})
    (line,) = [line for line in training_lines(fed, {}) if "**Input:**" in line]
    assert "waited" not in line


def test_the_explanation_of_the_evidence_uses_this_runs_numbers_or_none() -> None:
    from retrainer.report import evidence_in_words

    decision = a_decision()
    assert decision.paired_tests
    first = next(test for test in decision.paired_tests if test.discordant)
    changed = first.model_copy(update={"discordant": (7, 3)})
    tests = [changed if test is first else test for test in decision.paired_tests]
    words = evidence_in_words(decision.model_copy(update={"paired_tests": tests}))
    assert "*7 vs 3 images*: only the candidate got 7 right, only the champion 3" in words
    assert evidence_in_words(decision.model_copy(update={"paired_tests": []})) == ""


def test_a_run_whose_first_epoch_stayed_best_is_not_said_to_converge() -> None:
    trained = records.trained_model(epochs_run=11, kept_epoch=1, stopped_early=True)
    (row,) = [line for line in training_lines(trained, {}) if "How it ended" in line]
    assert "converged" not in row
    assert "no epoch after the first improved val_loss in 11" in row


def test_the_report_names_the_model_and_a_backbones_weights() -> None:
    from retrainer.models import describe_model
    from retrainer.settings import TrainingConfig

    config = TrainingConfig(
        backbone="mobilenet_v3_small",
        backbone_weights="s3://weights-bucket/mnv3.weights.h5",
        image_size=64,
    )
    trained = records.trained_model(model_description=describe_model(config))
    (row,) = [line for line in training_lines(trained, {}) if "**Model:**" in line]
    assert "mobilenet_v3_small backbone (weights s3://weights-bucket/mnv3.weights.h5)" in row


def test_a_model_still_improving_at_its_last_epoch_is_reported_as_such() -> None:
    trained = records.trained_model(epochs_run=30, kept_epoch=30, still_improving=True)
    (row,) = [line for line in training_lines(trained, {}) if "How it ended" in line]
    assert "still improving: val_loss was at its best in the last epoch" in row


calls: list[str] = []


@task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_unless_bad_input)
def flaky_step(error: Exception) -> str:
    calls.append(type(error).__name__)
    if len(calls) == 1:
        raise error
    return "done"


@flow
def one_step(error: Exception) -> str:
    return flaky_step(error)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_task_retries_an_outage_but_not_bad_input() -> None:
    calls.clear()
    assert one_step(ConnectionError("connection reset by peer")) == "done"
    assert calls == ["ConnectionError", "ConnectionError"]

    calls.clear()
    state = one_step(BadInput("RETRAINER_EPOCHS: must be at least 1"), return_state=True)
    assert state.is_failed()
    assert calls == ["BadInput"], "bad input was retried"
