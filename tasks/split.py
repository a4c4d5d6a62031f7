"""The split task: the shards on this worker, and the stable split the train and gate tasks read."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from retrainer.data.shards import fetch_shards
from retrainer.data.splits import split_data
from retrainer.records import DataSplit, ValidatedData
from retrainer.report import artifact_key
from retrainer.settings import Settings
from tasks.retries import io_task
from tasks.runtime import progress_reporter, run_folder


@io_task("split data")
def split(data: ValidatedData, settings: Settings) -> DataSplit:
    shards = fetch_shards(
        data.prepared,
        settings.cache.shards_dir,
        progress_reporter("Downloading the prepared shards"),
    )
    data_split = split_data(
        data,
        shards,
        split_path=run_folder(settings).split,
        batch_size=settings.batch_size,
        validation_fraction=settings.validation_fraction,
        test_fraction=settings.test_fraction,
    )
    get_run_logger().info(
        "Split %d images: %d for training, %d for validation (early stopping), %d for the "
        "test split (the gate only); %d quarantined; copies: %d held out of training, %d test "
        "images left out of the gate",
        data_split.train_count + data_split.validation_count + data_split.test_count,
        data_split.train_count,
        data_split.validation_count,
        data_split.test_count,
        len(data.quarantined),
        data_split.held_out,
        data_split.test_left_out,
    )
    create_table_artifact(
        table=[
            {
                "class": name,
                "images": data.images_per_class[name],
                "training": data_split.train_per_class[name],
                "validation": data_split.validation_per_class[name],
                "test": data_split.test_per_class[name],
            }
            for name in data_split.class_names
        ],
        key=artifact_key(settings.model_name, "data-summary"),
        description=f"Images per class; {len(data.quarantined)} file(s) quarantined",
    )
    return data_split
