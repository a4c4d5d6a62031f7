"""The gate task: score candidate and champion on the same images, then judge the candidate."""

from __future__ import annotations

from prefect import get_run_logger

from retrainer.gating import decide
from retrainer.records import ChampionRecord, DataSplit, GateDecision, TrainedModel
from retrainer.settings import Settings
from retrainer.tensorflow_runtime import start_tensorflow
from tasks.lease import model_registry
from tasks.retries import io_task


@io_task("gate candidate")
def gate(
    split: DataSplit, trained: TrainedModel, champion: ChampionRecord | None, settings: Settings
) -> GateDecision:
    # Keras is imported here, as in the train task: a run that never trains need not load it.
    start_tensorflow(settings.tensorflow_logs)
    from retrainer.evaluation import evaluate

    evaluation = evaluate(
        trained.model_path,
        split,
        model_registry(settings),
        champion,
        settings.cache.champions_dir,
        settings.gate,
        settings.seed,
    )
    decision = decide(evaluation, settings.gate, trained.diverged)
    log = get_run_logger()
    (log.info if decision.passed else log.warning)("Gate %s", decision.reason)
    return decision
