"""The whole data path in one process, without Prefect: for notebooks, benchmarks and tests.

The same stage functions the flow wires together, called in turn: list, prepare every chunk
here, validate, fetch the shards, split.
"""

from __future__ import annotations

import logging
from pathlib import Path

from retrainer import Log
from retrainer.dataset import split_data
from retrainer.listing import list_data
from retrainer.preparation import (
    fetch_shards,
    plan_preparation,
    prepare_chunk,
    prepared_url,
    record_preparation,
)
from retrainer.records import Batches, DataSnapshot, PreparationSpec, PreparedData
from retrainer.settings import TrainingConfig
from retrainer.storage import open_store
from retrainer.validation import validate_data

logger = logging.getLogger(__name__)


def prepare_here(
    snapshot: DataSnapshot,
    store_url: str,
    spec: PreparationSpec,
    shards_dir: Path | None = None,
    log: Log = logger,
) -> PreparedData:
    """Plan, prepare every chunk in turn and record the index, in this process."""
    prepared_at = prepared_url(store_url, snapshot.source_url, spec)
    planned, chunks = plan_preparation(snapshot, prepared_at, spec, shards_dir, log)
    results = [prepare_chunk(chunk, log) for chunk in chunks]
    index_path = snapshot.listing_path.with_name("prepared-index.json")
    return record_preparation(snapshot, prepared_at, planned, results, index_path, log)


def batches_here(
    data_url: str,
    store_url: str,
    work_dir: Path,
    config: TrainingConfig,
    min_images_per_class: int = 5,
    max_quarantined_fraction: float = 0.1,
    log: Log = logger,
) -> Batches:
    """The batches of the data at `data_url`, prepared into `store_url`, cached in `work_dir`."""
    snapshot = list_data(open_store(data_url), work_dir / "listing.json", log)
    shards_dir = work_dir / "shards"
    prepared = prepare_here(snapshot, store_url, PreparationSpec.of(config), shards_dir, log)
    data = validate_data(
        prepared, work_dir, min_images_per_class, max_quarantined_fraction, log=log
    )
    shards = fetch_shards(prepared, shards_dir, log)
    return split_data(
        data,
        shards,
        work_dir,
        config.batch_size,
        config.validation_fraction,
        config.test_fraction,
    )
