"""The publish task: upload the version, promote it if it passed, and report the run."""

from __future__ import annotations

import shutil

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from retrainer.checkpoints import checkpoint_mirror
from retrainer.freshness import work_key
from retrainer.publishing import publish_version
from retrainer.records import Batches, GateDecision, Publication, TrainedModel, ValidatedData
from retrainer.registry import ModelRegistry
from retrainer.report import artifact_key, run_report
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import retry_unless_bad_input
from tasks.runtime import current_run_id


@task(
    name="publish model",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_bad_input,
)
def publish(
    data: ValidatedData,
    batches: Batches,
    trained: TrainedModel,
    decision: GateDecision,
    settings: Settings,
) -> Publication:
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    publication = publish_version(
        registry,
        batches,
        trained,
        decision,
        settings.training_parameters(),
        run_id=current_run_id(),
        log=get_run_logger(),
    )
    # The work is finished, whatever the gate said: its checkpoints are no longer needed.
    key = work_key(batches.data_fingerprint, settings.training_parameters())
    checkpoint_mirror(registry.store, settings.cache_dir, settings.model_name, key).clear()
    images = {
        name: (trained.model_path.parent / name).read_bytes()
        for name in publication.files
        if name.endswith(".png")
    }
    emit_event(
        event=f"retrainer.model.{publication.status}",
        resource={
            "prefect.resource.id": f"retrainer.model.{settings.model_name}",
            "prefect.resource.name": settings.model_name,
        },
        payload={"version": publication.version, "message": publication.message},
    )
    create_markdown_artifact(
        markdown=run_report(data, batches, trained, decision, publication, images),
        key=artifact_key(settings.model_name),
        description=publication.message,
    )
    # Everything of this run is in the store now; its local files would only fill the disk.
    shutil.rmtree(settings.cache.run_dir(current_run_id()), ignore_errors=True)
    data.index_path.unlink(missing_ok=True)
    return publication
