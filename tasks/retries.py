"""When a failed task is retried: outages yes, mistakes no. One header for every task that reads
or writes a store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun

from retrainer.errors import BadInput
from retrainer.lease import LeaseLost


def retry_unless_bad_input(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a dropped connection, a half-written file or a preempted worker; fail at once, with
    its message, on what a person must fix (BadInput), and on a lease this run may have lost:
    another run may hold it by now, and the next night resumes from the last checkpoint."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, BadInput | LeaseLost)


P = ParamSpec("P")
R = TypeVar("R")

# An outage passes in seconds or minutes: two retries, after 10 s and then 60 s. A retried train
# task resumes from the last finished epoch, so a retry costs one epoch at most.
IO_RETRY_DELAYS: list[float] = [10, 60]


def io_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """The header of a task that reads or writes a store: retried on outages, never on bad input."""
    return task(
        name=name,
        retries=len(IO_RETRY_DELAYS),
        retry_delay_seconds=IO_RETRY_DELAYS,
        retry_condition_fn=retry_unless_bad_input,
    )
