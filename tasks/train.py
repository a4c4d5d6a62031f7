"""The train task: fit on this worker's best device, resuming the same work where it stopped."""

from __future__ import annotations

from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from retrainer.checkpoints import checkpoint_mirror
from retrainer.freshness import work_key
from retrainer.records import Batches, ChampionRecord, TrainedModel
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import retry_unless_bad_input
from tasks.runtime import current_run_id


# A retry resumes from the last finished epoch (checkpoints), so retrying costs one epoch at most.
@task(
    name="train model", retries=2, retry_delay_seconds=30, retry_condition_fn=retry_unless_bad_input
)
def train(batches: Batches, champion: ChampionRecord | None, settings: Settings) -> TrainedModel:
    # TensorFlow takes seconds and hundreds of MB to import: only the tasks that need it pay.
    from retrainer.training import find_warm_start, train_model

    log = get_run_logger()
    store = open_store(settings.store_url)
    key = work_key(batches.data_fingerprint, settings.training_parameters())
    mirror = checkpoint_mirror(store, settings.cache_dir, settings.model_name, key)
    output_dir = settings.cache.run_dir(current_run_id())
    registry = ModelRegistry(store, settings.model_name)
    warm_start, started_from = find_warm_start(
        registry, champion, batches, settings.warm_start, settings.cache.champions_dir, log
    )
    progress = create_progress_artifact(0.0, description=f"Training '{settings.model_name}'")
    assert isinstance(progress, UUID)  # called from sync code: the value, not a coroutine

    def report_progress(done: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * done / total)

    return train_model(
        batches,
        settings,
        output_dir,
        mirror,
        warm_start=warm_start,
        started_from=started_from,
        log=log,
        on_epoch=report_progress,
    )
