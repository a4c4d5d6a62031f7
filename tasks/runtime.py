"""What the tasks know of the Prefect run they are in."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.runtime import flow_run

from retrainer.layout import RunFolder
from retrainer.settings import Settings


def current_run_id() -> str:
    """The flow run's id: names the run's version, its lease and its local folder."""
    return str(flow_run.id or "local")


def run_folder(settings: Settings) -> RunFolder:
    """This run's folder on the worker (`RunFolder`): what it lists, prepares, splits, trains."""
    return settings.cache.run(current_run_id())


def stage_seconds() -> dict[str, float]:
    """Seconds each finished stage of this run took, by task name (a subflow's included), in the
    order they ran: what the run's timeline in the Prefect UI shows."""
    if not flow_run.id:
        return {}
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run.id)]))
        )
    spans = sorted(
        (run.start_time, run.end_time, run.name.rsplit("-", 1)[0])  # "list data-f9c"
        for run in task_runs
        if run.start_time and run.end_time
    )
    seconds: dict[str, float] = {}
    for start, end, stage in spans:
        seconds[stage] = seconds.get(stage, 0.0) + (end - start).total_seconds()
    return seconds


def progress_reporter(description: str) -> Callable[[int, int], None]:
    """A Prefect progress artifact, and the function that moves it: `report(done, total)`."""
    artifact = create_progress_artifact(0.0, description=description)
    assert isinstance(artifact, UUID)  # called from sync code: the value, not a coroutine

    def report(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100.0 * done / total if total else 100.0)

    return report
