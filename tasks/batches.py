"""The build-batches task: the shards on this worker, and the stable split the train and gate
tasks read."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from retrainer.dataset import split_data
from retrainer.preparation import fetch_shards, unmark_reader
from retrainer.records import Batches, ValidatedData
from retrainer.settings import Settings
from tasks.retries import retry_unless_bad_input
from tasks.runtime import current_run_id, progress_reporter


@task(
    name="build batches",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_bad_input,
)
def build_batches(data: ValidatedData, settings: Settings) -> Batches:
    shards = fetch_shards(
        data.prepared,
        settings.cache.shards_dir,
        get_run_logger(),
        progress_reporter("Downloading the prepared shards"),
    )
    unmark_reader(data.prepared.prepared_url, current_run_id())  # its shards are on this disk
    batches = split_data(
        data,
        shards,
        work_dir=settings.cache.run_dir(current_run_id()),
        batch_size=settings.batch_size,
        validation_fraction=settings.validation_fraction,
        test_fraction=settings.test_fraction,
    )
    get_run_logger().info(
        "Split %d images: %d for training, %d for validation (early stopping), %d for the "
        "test split (the gate only); %d quarantined",
        batches.train_count + batches.validation_count + batches.test_count,
        batches.train_count,
        batches.validation_count,
        batches.test_count,
        len(data.quarantined),
    )
    create_table_artifact(
        table=[
            {
                "class": name,
                "images": data.images_per_class[name],
                "training": batches.train_per_class[name],
                "validation": batches.validation_per_class[name],
                "test": batches.test_per_class[name],
            }
            for name in batches.class_names
        ],
        key="data-summary",
        description=f"Images per class; {len(data.quarantined)} file(s) quarantined",
    )
    return batches
