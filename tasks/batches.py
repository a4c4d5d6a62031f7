"""The build-batches task: the stable train/validation split the train and gate tasks read."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.dataset import split_data
from retrainer.records import Batches, ValidatedData
from retrainer.settings import Settings


@task(name="build batches")
def build_batches(data: ValidatedData, settings: Settings) -> Batches:
    batches = split_data(
        data,
        work_dir=settings.cache_dir / "work",
        image_size=settings.image_size,
        batch_size=settings.batch_size,
        validation_fraction=settings.validation_fraction,
    )
    get_run_logger().info(
        "Split %d images: %d for training, %d for validation",
        batches.train_count + batches.validation_count,
        batches.train_count,
        batches.validation_count,
    )
    return batches
