"""The nightly flow: list -> (skip if nothing changed) -> prepare -> validate -> split -> train ->
gate -> publish."""

from __future__ import annotations

import logging
from typing import cast

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

import retrainer
from flows.prepare import prepare_dataset, task_runner_for
from retrainer.errors import BadInput, SettingsError, redact
from retrainer.records import DataSnapshot, Publication
from retrainer.settings import (
    BackboneParameter,
    BatchSizeParameter,
    DataUrlParameter,
    EpochsParameter,
    ForceParameter,
    LearningRateParameter,
    MinAccuracyParameter,
    ModelFactoryParameter,
    ModelNameParameter,
    RetrainParameters,
    Settings,
    load_settings,
)
from tasks.champion import read_champion
from tasks.freshness import check_for_changes, identify, report_skipped
from tasks.gate import gate
from tasks.lease import model_lease
from tasks.listing import list_data
from tasks.preflight import check_model, preflight
from tasks.prepare import reading_prepared_data
from tasks.publish import publish, report_failed
from tasks.retries import say_mistakes_once
from tasks.runtime import run_folder
from tasks.split import split
from tasks.train import train
from tasks.validate import validate

say_mistakes_once()


def flow_timeout_seconds() -> float:
    """A hung run would hold the model's lease and the deployment's queue: it is stopped after
    RETRAINER_FLOW_TIMEOUT_HOURS, read from the settings (environment or .env) when the flow is
    loaded. Settings that do not load leave the default: the run stops at its first step anyway,
    with their message."""
    try:
        return 3600 * load_settings().flow_timeout_hours
    except SettingsError:
        return 3600 * float(Settings.model_fields["flow_timeout_hours"].default)


def model_name_of_run() -> str:
    """The model this run is for: its parameter, else the settings' (which may not load)."""
    if model_name := flow_run.parameters.get("model_name"):
        return str(model_name)
    try:
        return load_settings().model_name
    except SettingsError:
        return "retrain"  # the run stops at its first step with the settings' message


def run_name() -> str:
    """`digits-2026-11-30`: the model and the night a run is for, in the runs list."""
    return f"{model_name_of_run()}-{flow_run.scheduled_start_time:%Y-%m-%d}"


def night_state(publication: Publication) -> State[Publication]:
    """The night's outcome as the run's final state, seen in the runs list and by automations
    (`prefect.flow-run.Rejected`): always Completed, so nothing retries or counts as a failure."""
    return Completed(name=publication.outcome, message=publication.message, data=publication)


@flow(
    name="retrain",
    flow_run_name=run_name,
    log_prints=True,
    timeout_seconds=flow_timeout_seconds(),
)
def retrain(
    model_name: ModelNameParameter = None,
    data_url: DataUrlParameter = None,
    epochs: EpochsParameter = None,
    batch_size: BatchSizeParameter = None,
    learning_rate: LearningRateParameter = None,
    min_accuracy: MinAccuracyParameter = None,
    model_factory: ModelFactoryParameter = None,
    backbone: BackboneParameter = None,
    force: ForceParameter = False,
) -> State[Publication]:
    """Retrain the classifier on the latest data and promote it only if it passes the gate.
    Every parameter left empty takes its value from the worker's settings."""
    parameters = RetrainParameters(
        model_name=model_name,
        data_url=data_url,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        min_accuracy=min_accuracy,
        model_factory=model_factory,
        backbone=backbone,
        force=force,
    )
    snapshot: DataSnapshot | None = None
    try:
        worker_settings = load_settings()
        settings = worker_settings.with_parameters(parameters)
        logging.getLogger(retrainer.__name__).setLevel(settings.log_level)
        if settings.model_choice != worker_settings.model_choice:
            get_run_logger().info(
                "This run trains %s (its parameters), in place of the worker's %s",
                settings.model_choice,
                worker_settings.model_choice,
            )
        preflight(settings)
        with model_lease(settings):
            # Decided from one listing, before any image is downloaded or TensorFlow is imported.
            snapshot = list_data(settings)
            champion = read_champion(settings)
            work = identify(snapshot, settings)
            if already_done := check_for_changes(work, champion, settings):
                if not force:
                    return night_state(report_skipped(already_done, settings))
                get_run_logger().warning(
                    "Forced: training anyway, where this run would have stopped: %s",
                    already_done.message,
                )
            check_model(snapshot, settings)
            prepare = prepare_dataset.with_options(task_runner=task_runner_for(settings))
            with reading_prepared_data(snapshot, settings):  # gc keeps the shards meanwhile
                prepared = prepare(snapshot, settings, run_folder(settings).prepared_index)
                data = validate(prepared, champion, settings)
                data_split = split(data, settings)
            trained = train(data_split, work, champion, settings)
            decision = gate(data_split, trained, champion, settings)
            publication = publish(data, data_split, work, trained, decision, champion, settings)
            return night_state(publication)
    except BadInput as mistake:
        return stopped_by(mistake, parameters, snapshot)


def stopped_by(
    mistake: BadInput, parameters: RetrainParameters, snapshot: DataSnapshot | None
) -> State[Publication]:
    """A night stopped by something a person must fix: its message is the run's state message,
    said once (tasks/retries.py keeps Prefect's tracebacks out), with a report of what to fix."""
    problem = redact(str(mistake))
    get_run_logger().error("Stopped: %s", problem)
    report_failed(problem, model_name_of_run(), snapshot)
    return Failed(message=problem, data=mistake)


def run_here(parameters: RetrainParameters) -> State[Publication]:
    """One run in this process (the CLI, the demo): its final state, named for the outcome, whose
    result is the night's Publication."""
    state = retrain(**parameters.model_dump(), return_state=True)
    return cast("State[Publication]", state)  # Prefect types it as a state of the returned state
