"""The whole data path in one process, without Prefect: for notebooks, benchmarks and tests.

The same stage functions the flow wires together, called in turn: list, prepare every chunk
here, validate, fetch the shards, split. The input function (`retrainer.data.inputs`) reads
the split it returns.
"""

from __future__ import annotations

from pathlib import Path

from retrainer.data.listing import list_data
from retrainer.data.preparation import (
    plan_preparation,
    prepare_chunk,
    prepared_url,
    record_preparation,
)
from retrainer.data.shards import fetch_shards
from retrainer.data.splits import split_data
from retrainer.data.validation import validate_data
from retrainer.layout import LocalCache, RunFolder
from retrainer.records import DataSnapshot, DataSplit, PreparationSpec, PreparedData
from retrainer.settings import TrainingConfig
from retrainer.storage import open_store


def prepare_here(
    snapshot: DataSnapshot,
    store_url: str,
    spec: PreparationSpec,
    index_path: Path,
    shards_dir: Path | None = None,
) -> PreparedData:
    """Plan, prepare every chunk in turn and record the index (a copy at `index_path`), in this
    process."""
    prepared_at = prepared_url(store_url, snapshot.source_url, spec)
    planned, chunks = plan_preparation(snapshot, prepared_at, spec, shards_dir)
    results = [prepare_chunk(chunk) for chunk in chunks]
    return record_preparation(snapshot, prepared_at, planned, results, index_path)


def split_here(
    data_url: str,
    store_url: str,
    work_dir: Path,
    config: TrainingConfig,
    min_images_per_class: int = 5,
    max_quarantined_fraction: float = 0.1,
) -> DataSplit:
    """The split of the data at `data_url`, prepared into `store_url`, cached in `work_dir`."""
    run = RunFolder(work_dir)
    snapshot = list_data(open_store(data_url), run.listing)
    shards_dir = LocalCache(work_dir).shards_dir
    spec = PreparationSpec.of(config)
    prepared = prepare_here(snapshot, store_url, spec, run.prepared_index, shards_dir)
    data = validate_data(
        prepared,
        run.usable_images,
        min_images_per_class,
        max_quarantined_fraction,
        on_label_conflict=config.on_label_conflict,
    )
    shards = fetch_shards(prepared, shards_dir)
    return split_data(
        data,
        shards,
        run.split,
        config.batch_size,
        config.validation_fraction,
        config.test_fraction,
    )
