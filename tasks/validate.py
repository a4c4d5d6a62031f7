"""The validate task: quarantine unusable files, check classes, before any training time."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import DataSnapshot, ValidatedData
from retrainer.settings import Settings
from retrainer.validation import validate_data


@task(name="validate data")
def validate(snapshot: DataSnapshot, settings: Settings) -> ValidatedData:
    return validate_data(
        snapshot,
        work_dir=settings.cache_dir / "work",
        min_images_per_class=settings.min_images_per_class,
        max_quarantined_fraction=settings.max_quarantined_fraction,
        log=get_run_logger(),
    )
