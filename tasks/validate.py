"""The validate task: quarantine unusable files, check classes, before any training time."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import ChampionRecord, PreparedData, ValidatedData
from retrainer.settings import Settings
from retrainer.validation import validate_data
from tasks.runtime import current_run_id


@task(name="validate data")
def validate(
    prepared: PreparedData, champion: ChampionRecord | None, settings: Settings
) -> ValidatedData:
    return validate_data(
        prepared,
        work_dir=settings.cache.run_dir(current_run_id()),
        min_images_per_class=settings.min_images_per_class,
        max_quarantined_fraction=settings.max_quarantined_fraction,
        champion_classes=champion.class_names if champion else None,
        on_class_change=settings.on_class_change,
        log=get_run_logger(),
    )
