"""Hold the model's lease for the whole run, so no other run of this model can overlap it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger

from retrainer.lease import ModelLease
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.runtime import current_run_id


@contextmanager
def model_lease(settings: Settings) -> Iterator[ModelLease]:
    lease = ModelLease(
        open_store(settings.store_url),
        settings.model_name,
        run_id=current_run_id(),
        seconds=settings.lease_seconds,
        log=get_run_logger(),
    )
    with lease:
        yield lease
