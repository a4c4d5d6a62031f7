"""The validate task: quarantine unusable files, check classes, before any training time."""

from __future__ import annotations

from prefect import task

from retrainer.data.validation import validate_data
from retrainer.records import ChampionRecord, PreparedData, ValidatedData
from retrainer.settings import Settings
from tasks.runtime import run_folder


@task(name="validate data")
def validate(
    prepared: PreparedData, champion: ChampionRecord | None, settings: Settings
) -> ValidatedData:
    return validate_data(
        prepared,
        usable_path=run_folder(settings).usable_images,
        min_images_per_class=settings.min_images_per_class,
        max_quarantined_fraction=settings.max_quarantined_fraction,
        champion_classes=champion.class_names if champion else None,
        on_class_change=settings.on_class_change,
        on_label_conflict=settings.on_label_conflict,
    )
