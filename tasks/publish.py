"""The publish task: upload the version, promote it if it passed, and report the run."""

from __future__ import annotations

import shutil

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from retrainer.checkpoints import checkpoint_mirror
from retrainer.events import model_event, model_resource
from retrainer.publishing import publish_version
from retrainer.records import (
    DataSplit,
    GateDecision,
    Publication,
    TrainedModel,
    ValidatedData,
    Work,
)
from retrainer.registry import ModelRegistry
from retrainer.report import artifact_key, run_report
from retrainer.settings import Settings
from tasks.lease import model_store
from tasks.retries import retry_unless_bad_input
from tasks.runtime import current_run_id, run_folder


@task(
    name="publish model",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_bad_input,
)
def publish(
    data: ValidatedData,
    split: DataSplit,
    work: Work,
    trained: TrainedModel,
    decision: GateDecision,
    settings: Settings,
) -> Publication:
    registry = ModelRegistry(model_store(settings), settings.model_name)
    published = publish_version(
        registry,
        split,
        trained,
        decision,
        work,
        checkpoint_mirror(registry.store, settings.cache_dir, settings.model_name, work.key),
        run_id=current_run_id(),
        log=get_run_logger(),
    )
    publication = published.publication
    emit_event(
        event=model_event(publication.status),
        resource=model_resource(settings.model_name),
        payload={"version": publication.version, "message": publication.message},
    )
    images = {name: path.read_bytes() for name, path in published.plots.items()}
    create_markdown_artifact(
        markdown=run_report(data, split, trained, decision, publication, images),
        key=artifact_key(settings.model_name),
        description=publication.message,
    )
    # Everything of this run is in the store now; its local files would only fill the disk.
    shutil.rmtree(run_folder(settings).root, ignore_errors=True)
    return publication
