"""The preflight tasks: the stores usable and safe to promote in; the user's model and callbacks
sound, once the run knows it will train."""

from __future__ import annotations

from prefect import task

from retrainer.data.validation import class_of
from retrainer.preflight import check_before_work, check_user_code
from retrainer.records import DataSnapshot
from retrainer.settings import Settings
from tasks.retries import io_task


@io_task("check stores")
def preflight(settings: Settings) -> None:
    check_before_work(settings)


@task(name="check model")
def check_model(snapshot: DataSnapshot, settings: Settings) -> None:
    classes = {class_of(listed.key) for listed in snapshot.read_listing()}
    check_user_code(settings, len(classes))
