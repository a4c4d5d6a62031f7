"""The preflight task: the stores usable and safe to promote in, the model factory sound."""

from __future__ import annotations

from prefect import task

from retrainer.preflight import check_before_work
from retrainer.settings import Settings
from tasks.retries import retry_unless_bad_input


@task(
    name="check stores",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def preflight(settings: Settings) -> None:
    check_before_work(settings)
