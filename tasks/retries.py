"""When a failed task is retried: outages yes, mistakes no."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State, TaskRun

from retrainer.errors import BadInput


def retry_unless_bad_input(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a dropped connection, a half-written file or a preempted worker; fail at once, with
    its message, on what a person must fix (BadInput), which a retry cannot."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, BadInput)
