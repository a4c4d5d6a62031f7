"""The list task: one listing of the data, before anything is downloaded."""

from __future__ import annotations

from prefect import get_run_logger

from retrainer.data import listing
from retrainer.records import DataSnapshot
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import io_task
from tasks.runtime import run_folder


@io_task("list data")
def list_data(settings: Settings) -> DataSnapshot:
    log = get_run_logger()
    source = open_store(settings.resolved_data_url)
    snapshot = listing.list_data(source, run_folder(settings).listing)
    log.info(
        "Data %s: %d files, fingerprint %s (%d refused)",
        snapshot.source_url,
        snapshot.file_count,
        snapshot.fingerprint[:12],
        len(snapshot.refused),
    )
    return snapshot
