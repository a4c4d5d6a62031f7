"""The validate task: quarantine unusable files, check classes, before any training time."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import DataSnapshot, ValidatedData
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import open_store
from retrainer.validation import validate_data
from tasks.retries import retry_unless_bad_input


@task(
    name="validate data",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def validate(snapshot: DataSnapshot, settings: Settings) -> ValidatedData:
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    return validate_data(
        snapshot,
        work_dir=settings.cache_dir / "work",
        min_images_per_class=settings.min_images_per_class,
        max_quarantined_fraction=settings.max_quarantined_fraction,
        champion_classes=registry.champion_classes(),
        on_class_change=settings.on_class_change,
        log=get_run_logger(),
    )
