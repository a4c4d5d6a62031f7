"""The preflight task: both stores usable, and the model store safe to promote in."""

from __future__ import annotations

from prefect import task

from retrainer.preflight import check_stores
from retrainer.settings import Settings
from tasks.retries import retry_unless_bad_input


@task(
    name="check stores",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,
)
def preflight(settings: Settings) -> None:
    check_stores(settings)
