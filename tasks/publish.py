"""The publish task: upload the version, promote it if it passed, and report the run."""

from __future__ import annotations

import shutil

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from retrainer.checkpoints import checkpoint_mirror
from retrainer.events import model_event, model_resource
from retrainer.publishing import publish_version
from retrainer.records import (
    ChampionRecord,
    DataSplit,
    GateDecision,
    Publication,
    TrainedModel,
    ValidatedData,
    Work,
)
from retrainer.report import artifact_key, run_report
from retrainer.settings import Settings
from tasks.lease import model_registry
from tasks.retries import io_task
from tasks.runtime import current_run_id, run_folder, stage_seconds


@io_task("publish model")
def publish(
    data: ValidatedData,
    split: DataSplit,
    work: Work,
    trained: TrainedModel,
    decision: GateDecision,
    champion: ChampionRecord | None,
    settings: Settings,
) -> Publication:
    registry = model_registry(settings)
    published = publish_version(
        registry,
        split,
        trained,
        decision,
        champion,
        work,
        checkpoint_mirror(registry.store, settings.cache_dir, settings.model_name, work.key),
        run_id=current_run_id(),
    )
    publication = published.publication
    emit_event(
        event=model_event(publication.status),
        resource=model_resource(settings.model_name),
        payload={"version": publication.version, "message": publication.message},
    )
    images = {name: path.read_bytes() for name, path in published.plots.items()}
    create_markdown_artifact(
        markdown=run_report(data, split, trained, decision, publication, images, stage_seconds()),
        key=artifact_key(settings.model_name),
        description=f"Run report: {publication.outcome}",
    )
    # Everything of this run is in the store now; its local files would only fill the disk.
    shutil.rmtree(run_folder(settings).root, ignore_errors=True)
    return publication
