"""The read-champion task: the champion is read once per run, into one record every stage uses."""

from __future__ import annotations

from prefect import get_run_logger

from retrainer.records import ChampionRecord
from retrainer.settings import Settings
from tasks.lease import model_registry
from tasks.retries import io_task


@io_task("read champion")
def read_champion(settings: Settings) -> ChampionRecord | None:
    """The champion, once the store matches it (history entry, serving folder): a change of
    champion cut short by a kill is finished here, by whichever run comes next."""
    registry = model_registry(settings)
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
