"""The nightly retraining flow: fetch -> validate -> batches -> train -> gate -> publish."""

from __future__ import annotations

from prefect import flow

from retrainer.records import Publication
from retrainer.settings import RetrainParameters, load_settings
from tasks.batches import build_batches
from tasks.fetch import fetch
from tasks.freshness import check_for_changes
from tasks.gate import gate
from tasks.publish import publish
from tasks.train import train
from tasks.validate import validate


@flow(name="retrain", log_prints=True)
def retrain(parameters: RetrainParameters | None = None) -> Publication:
    """Retrain the classifier on the latest data and promote it only if it passes the gate."""
    parameters = parameters or RetrainParameters()
    settings = load_settings().with_parameters(parameters)
    snapshot = fetch(settings)
    if skipped := check_for_changes(snapshot, settings, parameters.force):
        return skipped
    data = validate(snapshot, settings)
    batches = build_batches(data, settings)
    trained = train(batches, settings)
    decision = gate(batches, trained, settings)
    return publish(data, batches, trained, decision, settings)
