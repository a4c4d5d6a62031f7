"""The read-champion task: the champion is read once per run, into one record every stage uses."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.records import ChampionRecord
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from tasks.lease import model_store
from tasks.retries import retry_unless_bad_input


@task(
    name="read champion",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def read_champion(settings: Settings) -> ChampionRecord | None:
    """The champion, once the store matches it (history entry, serving folder): a change of
    champion cut short by a kill is finished here, by whichever run comes next."""
    registry = ModelRegistry(model_store(settings), settings.model_name)
    log = get_run_logger()
    current, etag = registry.read_champion()
    champion = None
    if current is not None and etag is not None:
        for repaired in registry.make_store_match_champion(current):
            log.warning("Finished an interrupted change of champion: %s", repaired)
        champion = registry.champion_record(current, etag)
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
