"""One run per model at a time, however it was started: a lease object in the store.

`leases/<model>.json` names the run holding it. It is taken and renewed with conditional writes,
so two runs can never both hold it; a run that dies stops renewing, and its lease expires after
`seconds`. No worker's clock is trusted: a lease's age is the store's own time now (the `Date` of
its answer) less the time the store wrote it (`Last-Modified`). A dead run of this very machine
and process namespace (its process is gone) is recognised at once, so the command that resumes
after a kill does not wait for the expiry; containers that share a host name are told apart by
their process namespace.

The holder, in turn, stops writing when it could not renew for two thirds of `seconds` (an outage
of the store): `check()` raises LeaseLost before the next write, so a run that may have lost its
lease never writes as if it held it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from retrainer.errors import redact
from retrainer.layout import ModelKeys
from retrainer.storage import GuardedStore, ObjectInfo, ObjectNotFound, ObjectStore

logger = logging.getLogger(__name__)

# Last-Modified and Date have a resolution of one second each.
CLOCK_RESOLUTION = timedelta(seconds=2)
# The holder writes only while its last renewal is younger than this share of the lease: an
# upload that starts then still ends well before another run can take the lease over.
WRITABLE_SHARE = 2 / 3


class LeaseHeld(RuntimeError):
    """Another live run holds the model's lease; the message names it."""


class LeaseLost(RuntimeError):
    """This run may no longer hold its lease: it must not write as if it did."""


@functools.cache
def process_namespace() -> str:
    """This machine's boot and process namespace: two containers sharing a host name (host
    networking) differ here, and a pid means something only within one of them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""  # unknown: a holder is then never declared dead by its pid, only by expiry


class LeaseBody(BaseModel):
    run_id: str
    host: str
    pid: int
    process_namespace: str = ""
    seconds: int = 300
    taken_at: datetime
    released: bool = False
    writes: int = Field(
        0,
        description="the holder's writes so far: each renewal is new bytes and so a new ETag, "
        "and a takeover decided on an older read is refused by the compare-and-swap",
    )

    def describe(self) -> str:
        return (
            f"run {self.run_id} on {self.host} (pid {self.pid}), started "
            f"{self.taken_at:%Y-%m-%d %H:%M:%S} UTC"
        )


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, run by another user
    return False


def is_free(lease: LeaseBody, info: ObjectInfo) -> bool:
    """Released, not renewed within its seconds, or held by a process of this machine and
    process namespace that no longer exists."""
    # A store that does not tell the times (age None): the lease only ends when released.
    age = info.age or timedelta(0)
    if lease.released or age > timedelta(seconds=lease.seconds) + CLOCK_RESOLUTION:
        return True
    return (
        lease.host == socket.gethostname()
        and lease.process_namespace == process_namespace() != ""
        and _process_is_gone(lease.pid)
    )


class ModelLease:
    """Hold `leases/<model>.json` for one run (`with ModelLease(...):`), renewed in a thread."""

    def __init__(self, store: ObjectStore, model_name: str, run_id: str, seconds: int) -> None:
        self.store = store
        self.key = ModelKeys(model_name).lease
        self.model_name = model_name
        self.run_id = run_id
        self.seconds = seconds
        self.etag: str | None = None
        self.writes = 0  # LeaseBody.writes
        self.taken_at = datetime.now(UTC)
        self.renewed_at = time.monotonic()  # when the last write that succeeded was sent
        self.lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self, released: bool = False) -> bytes:
        body = LeaseBody(
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            process_namespace=process_namespace(),
            seconds=self.seconds,
            taken_at=self.taken_at,
            released=released,
            writes=self.writes,
        )
        return body.model_dump_json().encode()

    def _read(self) -> tuple[LeaseBody | None, ObjectInfo | None]:
        info = self.store.head(self.key)
        if info is None:
            return None, None
        try:
            return LeaseBody.model_validate_json(self.store.get(self.key)), info
        except ObjectNotFound:
            return None, None
        except ValidationError:
            return None, info  # unreadable: treated as free, still taken by compare-and-swap

    def acquire(self) -> None:
        current, info = self._read()
        # A retry of our own run (the same flow run id) may take it back.
        if current and info and not is_free(current, info) and current.run_id != self.run_id:
            left = timedelta(seconds=current.seconds) - (info.age or timedelta(0))
            raise LeaseHeld(
                f"model '{self.model_name}' is being retrained by {current.describe()}; its "
                f"lease ({self.store.describe(self.key)}) expires in "
                f"{int(max(left.total_seconds(), 0))} s "
                "unless that run renews it"
            )
        if not self._write(info.etag if info else None):
            holder, _ = self._read()
            raise LeaseHeld(
                f"model '{self.model_name}' was just taken by "
                f"{holder.describe() if holder else 'another run'}"
            )
        logger.info(
            "Holding the lease of '%s' (%s, renewed every %d s)",
            self.model_name,
            self.store.describe(self.key),
            self.seconds // 3,
        )
        # In this caller's context: a line the renewer logs reaches the same run log (Prefect finds
        # the run in the context).
        renew = contextvars.copy_context().run
        self._renewer = threading.Thread(
            target=renew, args=(self._renew_until_stopped,), daemon=True
        )
        self._renewer.start()

    def _write(self, expected_etag: str | None, released: bool = False) -> bool:
        sent_at = time.monotonic()
        self.writes += 1
        body = self._body(released)
        if not self.store.put_if(self.key, body, expected_etag):
            return False
        info = self.store.head(self.key)
        self.etag = info.etag if info else None
        self.renewed_at = sent_at
        return True

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self._write(self.etag):
                    self.lost = f"another run took the lease of '{self.model_name}'"
                    logger.error("Lost the lease of '%s' to another run", self.model_name)
                    return
            except Exception as error:  # an outage: try again at the next tick
                logger.warning(
                    "Could not renew the lease of '%s': %s", self.model_name, redact(str(error))
                )

    def check(self) -> None:
        """Raise LeaseLost unless this run surely still holds the lease."""
        if self.lost:
            raise LeaseLost(f"{self.lost}: this run stops before writing anything more")
        silent = time.monotonic() - self.renewed_at
        if silent > self.seconds * WRITABLE_SHARE:
            raise LeaseLost(
                f"the lease of '{self.model_name}' could not be renewed for {silent:.0f} s (the "
                f"store did not answer) and lapses after {self.seconds} s: this run stops before "
                "writing, so that no two runs write as holders at once"
            )

    def guard(self, store: ObjectStore) -> ObjectStore:
        """`store`, refusing every write once this run may have lost its lease."""
        return GuardedStore(store, self.check)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost:
            return  # another run holds it now
        try:
            self._write(self.etag, released=True)
        except Exception as error:  # it expires by itself
            logger.warning(
                "Could not release the lease of '%s': %s", self.model_name, redact(str(error))
            )

    def __enter__(self) -> ModelLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
