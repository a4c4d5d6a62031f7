"""The fetch task: check both stores, then mirror the data into the local cache."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.fetching import fetch_data
from retrainer.records import DataSnapshot
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import retry_unless_bad_input
from tasks.runtime import progress_reporter


@task(
    name="fetch data",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_unless_bad_input,
)
def fetch(settings: Settings) -> DataSnapshot:
    log = get_run_logger()
    snapshot = fetch_data(
        open_store(settings.resolved_data_url),
        settings.cache_dir,
        log,
        progress_reporter("Downloading the data"),
    )
    log.info(
        "Data %s: %d files, fingerprint %s (%d downloaded, %d removed)",
        snapshot.source_url,
        snapshot.file_count,
        snapshot.fingerprint[:12],
        snapshot.downloaded,
        snapshot.deleted,
    )
    return snapshot
