"""The preflight task: the stores usable and safe to promote in, the model factory sound."""

from __future__ import annotations

from retrainer.preflight import check_before_work
from retrainer.settings import Settings
from tasks.retries import io_task


@io_task("check stores")
def preflight(settings: Settings) -> None:
    check_before_work(settings)
