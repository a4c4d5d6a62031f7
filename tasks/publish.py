"""The publish task: upload the version, promote it if it passed, and report the run; and the
report of a night that stopped on something a person must fix."""

from __future__ import annotations

import shutil
from collections import Counter

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from retrainer.checkpoints import checkpoint_mirror
from retrainer.data.validation import class_of
from retrainer.events import model_event, model_resource
from retrainer.publishing import publish_version
from retrainer.records import (
    ChampionRecord,
    DataSnapshot,
    DataSplit,
    GateDecision,
    Publication,
    TrainedModel,
    ValidatedData,
    Work,
)
from retrainer.report import artifact_key, failed_report, run_report
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


@task(name="report failed run")
def report_failed(problem: str, model_name: str, snapshot: DataSnapshot | None) -> None:
    """The report artifact of a night that stopped on a mistake: what to fix, what was listed."""
    per_class = None
    if snapshot is not None:
        per_class = dict(sorted(Counter(class_of(o.key) for o in snapshot.read_listing()).items()))
    create_markdown_artifact(
        markdown=failed_report(model_name, problem, per_class),
        key=artifact_key(model_name),
        description="Run report: Failed",
    )
