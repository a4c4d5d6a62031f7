"""Say how far a long step is, in the log and to whoever shows it (a Prefect progress artifact)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PROGRESS_SECONDS = 10.0

OnProgress = Callable[[int, int], None]  # (items done, items to do)


class Progress:
    """A line and a callback every PROGRESS_SECONDS, and once more when the step is done."""

    def __init__(
        self,
        what: str,
        total: int,
        log: logging.Logger,
        on_progress: OnProgress | None = None,
    ) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.log = log
        self.on_progress = on_progress
        self.last = time.monotonic()
        if total == 0 and on_progress:
            on_progress(0, 0)  # nothing to do is done: a progress bar must not stay at 0%

    def advance(self) -> None:
        self.done += 1
        if time.monotonic() - self.last < PROGRESS_SECONDS and self.done < self.total:
            return
        self.last = time.monotonic()
        if self.done < self.total:
            self.log.info(
                "%s: %d of %d (%.0f%%)",
                self.what,
                self.done,
                self.total,
                100 * self.done / self.total,
            )
        if self.on_progress:
            self.on_progress(self.done, self.total)
