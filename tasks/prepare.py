"""The prepare tasks: plan from the store's index, prepare each chunk anywhere, record the index."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger

from retrainer.data.preparation import (
    mark_reader,
    plan_preparation,
    prepare_chunk,
    prepared_url,
    record_preparation,
    unmark_reader,
)
from retrainer.errors import redact
from retrainer.gc import READER_MARK_AGE
from retrainer.records import (
    DataSnapshot,
    PreparationChunk,
    PreparationSpec,
    PreparedChunk,
    PreparedData,
    PreparedIndex,
)
from retrainer.settings import Settings
from retrainer.tensorflow_runtime import start_tensorflow
from tasks.retries import io_task
from tasks.runtime import current_run_id


@io_task("mark reader")
def mark(prepared_at: str, run_id: str) -> None:
    mark_reader(prepared_at, run_id)


@io_task("unmark reader")
def unmark(prepared_at: str, run_id: str) -> None:
    unmark_reader(prepared_at, run_id)


@contextmanager
def reading_prepared_data(snapshot: DataSnapshot, settings: Settings) -> Iterator[None]:
    """This night reads its prepared dataset: from before the index is read until the night's
    shards are on this worker, or the night ends however it ends, gc removes none of its shards.
    The mark carries the nightly run's own id, so the mark removed is the one written; a killed
    run's mark ages out (READER_MARK_AGE)."""
    prepared_at = prepared_url(
        settings.store_url, snapshot.source_url, PreparationSpec.of(settings)
    )
    run_id = current_run_id()
    mark(prepared_at, run_id)
    try:
        yield
    finally:
        try:
            unmark(prepared_at, run_id)
        except Exception as error:  # an outage now must not hide how the night ended
            get_run_logger().warning(
                "Could not remove this run's reader mark (%s): it ages out in %s",
                redact(str(error)),
                READER_MARK_AGE,
            )


@io_task("plan preparation")
def plan(
    snapshot: DataSnapshot, prepared_at: str, spec: PreparationSpec, keep_in: Path | None
) -> tuple[PreparedIndex, list[PreparationChunk]]:
    return plan_preparation(snapshot, prepared_at, spec, keep_in)


@io_task("prepare chunk")
def prepare(chunk: PreparationChunk, show_tensorflow_logs: bool) -> PreparedChunk:
    """Runs on a thread of this worker, or on a Dask worker: needs only the stores' URLs."""
    log = get_run_logger()
    # Decoding imports TensorFlow: started quietly here, in whichever process this runs, so its
    # start-up lines stay out of the output and the device line later gets its reasons.
    start_tensorflow(show_tensorflow_logs)
    prepared = prepare_chunk(chunk)
    unusable = sum(1 for verdict in prepared.objects.values() if verdict.problem)
    log.info(
        "Prepared %d object(s) and %d carried record(s): %d unusable, %s",
        len(chunk.objects),
        sum(map(len, chunk.carried.values())),
        unusable,
        f"shard {prepared.shard[:12]} ({prepared.shard_info.size / 1e6:.1f} MB)"
        if prepared.shard and prepared.shard_info
        else "no shard",
    )
    return prepared


@io_task("record preparation")
def record(
    snapshot: DataSnapshot,
    prepared_at: str,
    planned: PreparedIndex,
    results: list[PreparedChunk],
    index_path: Path,
) -> PreparedData:
    log = get_run_logger()
    prepared = record_preparation(snapshot, prepared_at, planned, results, index_path)
    log.info(
        "Prepared %d new or changed object(s) into %d shard(s); %d reused from the store",
        prepared.prepared,
        prepared.shards_written,
        prepared.reused,
    )
    return prepared
