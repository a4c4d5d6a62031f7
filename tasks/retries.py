"""When a failed task is retried: outages yes, mistakes no."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State, TaskRun

from retrainer.errors import BadInput
from retrainer.lease import LeaseLost


def retry_unless_bad_input(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a dropped connection, a half-written file or a preempted worker; fail at once, with
    its message, on what a person must fix (BadInput), and on a lease this run may have lost:
    another run may hold it by now, and the next night resumes from the last checkpoint."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, BadInput | LeaseLost)
