"""What the tasks know of the Prefect run they are in."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from retrainer.layout import RunFolder
from retrainer.settings import Settings


def current_run_id() -> str:
    """The flow run's id: names the run's version, its lease and its local folder."""
    return str(flow_run.id or "local")


def run_folder(settings: Settings) -> RunFolder:
    """This run's folder on the worker (`RunFolder`): what it lists, prepares, splits, trains."""
    return settings.cache.run(current_run_id())


def progress_reporter(description: str) -> Callable[[int, int], None]:
    """A Prefect progress artifact, and the function that moves it: `report(done, total)`."""
    artifact = create_progress_artifact(0.0, description=description)
    assert isinstance(artifact, UUID)  # called from sync code: the value, not a coroutine

    def report(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / total)

    return report
