"""When a failed task is retried: outages yes, mistakes no. One header for every task that reads
or writes a store."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
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
        # What is done again is decided by the product (the work key, the prepared index), not by
        # Prefect's cache, whose key would hash every input: 0.7 s for an index of 100k images.
        cache_policy=NO_CACHE,
        retries=len(IO_RETRY_DELAYS),
        retry_delay_seconds=IO_RETRY_DELAYS,
        retry_condition_fn=retry_unless_bad_input,
    )


def mistake_names() -> set[str]:
    """The class names of BadInput and every subclass, as Prefect's state messages name them."""
    names, kinds = set(), [BadInput]
    while kinds:
        kind = kinds.pop()
        names.add(kind.__name__)
        kinds.extend(kind.__subclasses__())
    return names


class MistakesInOneLine(logging.Filter):
    """A mistake (BadInput) reaches the log once, as the flow's "Stopped: ..." line, without the
    tracebacks Prefect's engines add: a person reads what to fix, not where Python was. Anything
    else (an outage, a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadInput):
            return False  # the task's or the flow's own report of it: the flow says it once
        # A task's "Finished in state Failed('Task run encountered an exception DataError: ...')"
        # carries no exception, only its name.
        ended = re.match(
            r"Finished in state Failed\('Task run encountered an exception (\w+):",
            record.getMessage(),
        )
        return not (ended and ended.group(1) in mistake_names())


def say_mistakes_once() -> None:
    """Install MistakesInOneLine on Prefect's run loggers (once per process)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, MistakesInOneLine) for f in logger.filters):
            logger.addFilter(MistakesInOneLine())
