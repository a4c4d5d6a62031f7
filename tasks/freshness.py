"""The freshness task: skip training when the champion came from exactly this work."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from retrainer.freshness import skip_if_unchanged, work_key
from retrainer.records import ChampionRecord, DataSnapshot, Publication
from retrainer.registry import ModelRegistry
from retrainer.report import artifact_key
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import retry_unless_bad_input


@task(
    name="check for changes",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def check_for_changes(
    snapshot: DataSnapshot, champion: ChampionRecord | None, settings: Settings, force: bool
) -> Publication | None:
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    skipped = skip_if_unchanged(
        registry, champion, work_key(snapshot.fingerprint, settings.training_parameters())
    )
    log = get_run_logger()
    if skipped and force:
        log.info("Nothing changed since the champion, but force is set: training anyway")
        return None
    if skipped:
        log.info("Skipped: %s", skipped.message)
        create_markdown_artifact(
            markdown=f"# Retrain of `{settings.model_name}`: skipped\n\n{skipped.message}",
            key=artifact_key(settings.model_name),
            description=skipped.message,
        )
    return skipped
