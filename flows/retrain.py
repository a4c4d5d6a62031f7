"""The nightly flow: list -> prepare -> validate -> split -> train -> gate -> publish."""

from __future__ import annotations

import os

from prefect import flow, get_run_logger

from flows.prepare import prepare_dataset, task_runner_for
from retrainer.records import Publication
from retrainer.settings import RetrainParameters, load_settings
from tasks.champion import read_champion
from tasks.freshness import check_for_changes, identify, report_skipped
from tasks.gate import gate
from tasks.lease import model_lease
from tasks.listing import list_objects
from tasks.preflight import preflight
from tasks.publish import publish
from tasks.runtime import run_folder
from tasks.split import split
from tasks.train import train
from tasks.validate import validate

# A hung run would hold the model's lease and the deployment's queue: it is stopped after this.
FLOW_TIMEOUT_SECONDS = 3600 * float(os.environ.get("RETRAINER_FLOW_TIMEOUT_HOURS", "12"))


@flow(name="retrain", log_prints=True, timeout_seconds=FLOW_TIMEOUT_SECONDS)
def retrain(parameters: RetrainParameters | None = None) -> Publication:
    """Retrain the classifier on the latest data and promote it only if it passes the gate."""
    parameters = parameters or RetrainParameters()
    settings = load_settings().with_parameters(parameters)
    preflight(settings)
    with model_lease(settings):
        # Decided from one listing, before any image is downloaded or TensorFlow is imported.
        snapshot = list_objects(settings)
        champion = read_champion(settings)
        work = identify(snapshot, settings)
        if already_done := check_for_changes(work, champion, settings):
            if not parameters.force:
                return report_skipped(already_done, settings)
            get_run_logger().warning(
                "Forced: training anyway, where this run would have stopped: %s",
                already_done.message,
            )
        prepare = prepare_dataset.with_options(task_runner=task_runner_for(settings))
        prepared = prepare(snapshot, settings, run_folder(settings).prepared_index)
        data = validate(prepared, champion, settings)
        data_split = split(data, settings)
        trained = train(data_split, work, champion, settings)
        decision = gate(data_split, trained, champion, settings)
        return publish(data, data_split, work, trained, decision, settings)
