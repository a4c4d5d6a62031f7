"""The validate task: quarantine unusable files, check classes, before any training time."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import ChampionRecord, DataSnapshot, ValidatedData
from retrainer.settings import Settings
from retrainer.tensorflow_runtime import start_tensorflow
from retrainer.validation import ValidationRules, validate_data
from tasks.retries import retry_unless_bad_input


@task(
    name="validate data",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def validate(
    snapshot: DataSnapshot, champion: ChampionRecord | None, settings: Settings
) -> ValidatedData:
    # Files are checked with TensorFlow's own decoder, the one training uses.
    start_tensorflow()
    return validate_data(
        snapshot,
        work_dir=settings.cache.work_dir,
        min_images_per_class=settings.min_images_per_class,
        max_quarantined_fraction=settings.max_quarantined_fraction,
        champion_classes=champion.class_names if champion else None,
        on_class_change=settings.on_class_change,
        log=get_run_logger(),
        rules=ValidationRules.of(settings),
    )
