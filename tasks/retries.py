"""When a failed task is retried: outages yes, mistakes no."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State, TaskRun


def retry_unless_bad_input(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a dropped connection or a preempted worker; fail at once, with its message, on a bad
    setting or bad data (every such error here is a ValueError), which a retry cannot fix."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, ValueError)
