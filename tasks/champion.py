"""The read-champion task: the champion is read once per run, into one record every stage uses."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import ChampionRecord
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import open_store
from tasks.retries import retry_unless_bad_input


@task(
    name="read champion",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def read_champion(settings: Settings) -> ChampionRecord | None:
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    champion = registry.read_champion_record()
    log = get_run_logger()
    if champion is None:
        log.info(
            "'%s' has no champion yet: the first model is judged by the thresholds",
            settings.model_name,
        )
    else:
        log.info(
            "Champion of '%s': version %s (%d classes)",
            settings.model_name,
            champion.version,
            len(champion.class_names),
        )
    return champion
