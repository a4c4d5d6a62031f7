"""The train task: fit on this worker's best device, resuming the same work where it stopped."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.checkpoints import checkpoint_mirror
from retrainer.records import ChampionRecord, DataSplit, TrainedModel, Work
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.tensorflow_runtime import start_tensorflow
from tasks.lease import model_store
from tasks.retries import retry_unless_bad_input
from tasks.runtime import progress_reporter, run_folder


# A retry resumes from the last finished epoch (checkpoints), so retrying costs one epoch at most.
@task(
    name="train model", retries=2, retry_delay_seconds=30, retry_condition_fn=retry_unless_bad_input
)
def train(
    split: DataSplit, work: Work, champion: ChampionRecord | None, settings: Settings
) -> TrainedModel:
    # TensorFlow takes seconds and hundreds of MB to import: only the tasks that need it pay,
    # and its start-up noise is kept out of the log.
    start_tensorflow()
    from retrainer.devices import detect_devices
    from retrainer.models import fetch_backbone_weights, find_warm_start
    from retrainer.training import train_model

    log = get_run_logger()
    store = model_store(settings)
    mirror = checkpoint_mirror(store, settings.cache_dir, settings.model_name, work.key)
    output_dir = run_folder(settings).root
    registry = ModelRegistry(store, settings.model_name)
    warm_start, started_from = find_warm_start(
        registry, champion, split, settings.warm_start, settings.cache.champions_dir, log
    )
    backbone_weights = (
        fetch_backbone_weights(settings.backbone_weights, settings.cache.backbones_dir, log)
        if settings.backbone != "none" and settings.backbone_weights
        else None
    )
    return train_model(
        split,
        work.config,
        output_dir,
        mirror,
        warm_start=warm_start,
        started_from=started_from,
        backbone_weights=backbone_weights,
        log=log,
        on_epoch=progress_reporter(f"Training '{settings.model_name}'"),
        plan=detect_devices(settings.mixed_precision, settings.device),
    )
