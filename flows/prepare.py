"""The prepare flow: new images checked and decoded once into shards in the store.

A subflow of the nightly run, with its own task runner: the chunks are prepared on threads of
the worker by default, or on a Dask cluster (RETRAINER_DASK_ADDRESS), so the CPU work of decoding
can leave the GPU node. Planning and recording run where the flow runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from prefect import flow, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from retrainer.data.preparation import prepared_url
from retrainer.records import (
    DataSnapshot,
    PreparationSpec,
    PreparedChunk,
    PreparedData,
    PreparedIndex,
)
from retrainer.settings import Settings
from tasks.prepare import plan, prepare, record


def task_runner_for(settings: Settings) -> TaskRunner[Any]:
    """Threads on this worker, or the Dask cluster at RETRAINER_DASK_ADDRESS."""
    if settings.dask_address:
        from prefect_dask import DaskTaskRunner  # the `dask` extra

        return DaskTaskRunner(address=settings.dask_address)
    return ThreadPoolTaskRunner(max_workers=settings.prepare_workers)


@flow(name="prepare dataset", flow_run_name="prepare {settings.model_name}", log_prints=True)
def prepare_dataset(snapshot: DataSnapshot, settings: Settings, index_path: Path) -> PreparedData:
    """Prepare what the store lacks; the index is copied to `index_path` on this worker."""
    spec = PreparationSpec.of(settings)
    prepared_at = prepared_url(settings.store_url, snapshot.source_url, spec)
    # Chunks on this worker's threads leave their shards in its cache; a Dask worker's cannot.
    keep_in = None if settings.dask_address else settings.cache.shards_dir
    planned, chunks = plan(snapshot, prepared_at, spec, keep_in)
    results = prepare.map(chunks, unmapped(settings.tensorflow_logs)).result()
    # The planned index and the chunks' verdicts hold every image: quoted, Prefect does not walk
    # them looking for futures (8.9 s for 100k images; quoted, 0.01 s). The task receives them
    # unwrapped; the casts say so to the type checker.
    return record(
        snapshot,
        prepared_at,
        cast(PreparedIndex, quote(planned)),
        cast(list[PreparedChunk], quote(results)),
        index_path,
    )
