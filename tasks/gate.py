"""The gate task: score candidate and champion on the same images, then judge the candidate."""

from __future__ import annotations

from prefect import get_run_logger, task

from retrainer.gating import decide
from retrainer.records import ChampionRecord, DataSplit, GateDecision, TrainedModel
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import open_store
from retrainer.tensorflow_runtime import start_tensorflow
from tasks.retries import retry_unless_bad_input


@task(
    name="gate candidate",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def gate(
    split: DataSplit, trained: TrainedModel, champion: ChampionRecord | None, settings: Settings
) -> GateDecision:
    # Keras is imported here, as in the train task: a run that never trains need not load it.
    start_tensorflow()
    from retrainer.evaluation import evaluate

    log = get_run_logger()
    registry = ModelRegistry(open_store(settings.store_url), settings.model_name)
    evaluation = evaluate(
        trained.model_path,
        split,
        registry,
        champion,
        settings.cache.champions_dir,
        settings.gate,
        settings.seed,
        log,
    )
    decision = decide(
        evaluation.candidate,
        evaluation.champion,
        settings.gate,
        champion_version=champion.version if champion else None,
        champion_etag=champion.etag if champion else None,
        champion_note=evaluation.note,
        diverged=trained.diverged,
        tests=evaluation.tests,
        candidate_validation=evaluation.candidate_validation,
        test_images=evaluation.test_images,
    )
    (log.info if decision.passed else log.warning)("Gate %s", decision.reason)
    return decision
