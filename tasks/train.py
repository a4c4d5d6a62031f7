"""The train task: fit on this worker's best device, resuming the same work where it stopped."""

from __future__ import annotations

from retrainer.checkpoints import checkpoint_mirror
from retrainer.records import ChampionRecord, DataSplit, TrainedModel, Work
from retrainer.settings import Settings
from retrainer.tensorflow_runtime import start_tensorflow
from tasks.lease import model_registry
from tasks.retries import io_task
from tasks.runtime import progress_reporter, run_folder


@io_task("train model")
def train(
    split: DataSplit, work: Work, champion: ChampionRecord | None, settings: Settings
) -> TrainedModel:
    # TensorFlow takes seconds and hundreds of MB to import: only the tasks that need it pay,
    # and its start-up noise is kept out of the log.
    start_tensorflow(settings.tensorflow_logs)
    from retrainer.champion import find_warm_start
    from retrainer.compute_cache import kept_cuda_cache
    from retrainer.devices import detect_devices
    from retrainer.models import fetch_backbone_weights
    from retrainer.training import train_model

    registry = model_registry(settings)
    warm_start = find_warm_start(
        registry,
        champion,
        split,
        settings.warm_start,
        settings.cache.champions_dir,
    )
    backbone_weights = (
        fetch_backbone_weights(settings.backbone_weights, settings.cache.backbones_dir)
        if settings.backbone != "none" and settings.backbone_weights
        else None
    )
    plan = detect_devices(
        settings.mixed_precision,
        settings.device,
        fine_tuning=settings.total_epochs > settings.epochs,
    )
    with kept_cuda_cache(registry.store, plan.compiles_from_ptx):
        return train_model(
            split,
            work.config,
            run_folder(settings).root,
            checkpoint_mirror(registry.store, settings.cache_dir, settings.model_name, work.key),
            warm_start=warm_start,
            backbone_weights=backbone_weights,
            on_epoch=progress_reporter(f"Training '{settings.model_name}'"),
            plan=plan,
        )
