"""The train task: fit the model on this worker's best device."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from retrainer.records import Batches, TrainedModel
from retrainer.settings import Settings


@task(name="train model")
def train(batches: Batches, settings: Settings) -> TrainedModel:
    # TensorFlow takes seconds and hundreds of MB to import: only the task that trains pays it.
    from retrainer.training import train_model

    return train_model(
        batches,
        output_dir=settings.cache_dir / "runs" / str(flow_run.id or "local"),
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        model_factory=settings.model_factory,
        log=get_run_logger(),
    )
