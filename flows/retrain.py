"""The nightly flow: list -> (skip if nothing changed) -> prepare -> validate -> split -> train ->
gate -> publish."""

from __future__ import annotations

import logging

from prefect import flow, get_run_logger

import retrainer
from flows.prepare import prepare_dataset, task_runner_for
from retrainer.errors import SettingsError
from retrainer.records import Publication
from retrainer.settings import RetrainParameters, Settings, load_settings
from tasks.champion import read_champion
from tasks.freshness import check_for_changes, identify, report_skipped
from tasks.gate import gate
from tasks.lease import model_lease
from tasks.listing import list_data
from tasks.preflight import preflight
from tasks.publish import publish
from tasks.runtime import run_folder
from tasks.split import split
from tasks.train import train
from tasks.validate import validate


def flow_timeout_seconds() -> float:
    """A hung run would hold the model's lease and the deployment's queue: it is stopped after
    RETRAINER_FLOW_TIMEOUT_HOURS, read from the settings (environment or .env) when the flow is
    loaded. Settings that do not load leave the default: the run stops at its first step anyway,
    with their message."""
    try:
        return 3600 * load_settings().flow_timeout_hours
    except SettingsError:
        return 3600 * float(Settings.model_fields["flow_timeout_hours"].default)


@flow(name="retrain", log_prints=True, timeout_seconds=flow_timeout_seconds())
def retrain(parameters: RetrainParameters | None = None) -> Publication:
    """Retrain the classifier on the latest data and promote it only if it passes the gate."""
    parameters = parameters or RetrainParameters()
    settings = load_settings().with_parameters(parameters)
    logging.getLogger(retrainer.__name__).setLevel(settings.log_level)
    preflight(settings)
    with model_lease(settings):
        # Decided from one listing, before any image is downloaded or TensorFlow is imported.
        snapshot = list_data(settings)
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
        return publish(data, data_split, work, trained, decision, champion, settings)
