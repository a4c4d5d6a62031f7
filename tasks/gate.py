"""The gate task: read the champion pointer, then judge the candidate."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.gating import decide
from retrainer.records import GateDecision, TrainedModel
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import open_store


@task(name="gate candidate", retries=2, retry_delay_seconds=10)
def gate(trained: TrainedModel, settings: Settings) -> GateDecision:
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    champion, etag = registry.read_champion()
    decision = decide(
        trained.metrics,
        settings.gate,
        champion_version=champion.version if champion else None,
        champion_etag=etag,
        stopped_reason=trained.stopped_reason,
    )
    log = get_run_logger()
    (log.info if decision.passed else log.warning)("Gate %s", decision.reason)
    return decision
