"""One run per model at a time, however it was started: a lease object in the store.

`leases/<model>.json` names the run holding it and when it expires. It is taken and renewed with
conditional writes, so two runs can never both hold it; a run that dies stops renewing, and its
lease expires after `seconds`. A dead run on this very machine (its process is gone) is recognised
at once, so the command that resumes after a kill does not wait for the expiry.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ValidationError

from retrainer import Log
from retrainer.storage import ObjectNotFound, ObjectStore

logger = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the model's lease; the message names it."""


class LeaseBody(BaseModel):
    run_id: str
    host: str
    pid: int
    taken_at: datetime
    expires_at: datetime
    released: bool = False

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


def is_free(lease: LeaseBody, now: datetime) -> bool:
    """Released, expired, or held by a process of this machine that no longer exists."""
    if lease.released or lease.expires_at <= now:
        return True
    return lease.host == socket.gethostname() and _process_is_gone(lease.pid)


class ModelLease:
    """Hold `leases/<model>.json` for one run (`with ModelLease(...):`), renewed in a thread."""

    def __init__(
        self, store: ObjectStore, model_name: str, run_id: str, seconds: int, log: Log = logger
    ) -> None:
        self.store = store
        self.key = f"leases/{model_name}.json"
        self.model_name = model_name
        self.run_id = run_id
        self.seconds = seconds
        self.log = log
        self.etag: str | None = None
        self.taken_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self, released: bool = False) -> bytes:
        now = datetime.now(UTC)
        body = LeaseBody(
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            taken_at=self.taken_at,
            expires_at=now if released else now + timedelta(seconds=self.seconds),
            released=released,
        )
        return body.model_dump_json().encode()

    def _read(self) -> tuple[LeaseBody | None, str | None]:
        info = self.store.head(self.key)
        if info is None:
            return None, None
        try:
            return LeaseBody.model_validate_json(self.store.get(self.key)), info.etag
        except ObjectNotFound:
            return None, None
        except ValidationError:
            return None, info.etag  # unreadable: treated as free, still taken by compare-and-swap

    def acquire(self) -> None:
        current, etag = self._read()
        held = current is not None and not is_free(current, datetime.now(UTC))
        # A retry of our own run (the same flow run id) may take it back.
        if current is not None and held and current.run_id != self.run_id:
            raise LeaseHeld(
                f"model '{self.model_name}' is being retrained by {current.describe()}; its "
                f"lease ({self.store.describe(self.key)}) expires at "
                f"{current.expires_at:%H:%M:%S} UTC unless that run renews it"
            )
        if not self._write(etag):
            holder, _ = self._read()
            raise LeaseHeld(
                f"model '{self.model_name}' was just taken by "
                f"{holder.describe() if holder else 'another run'}"
            )
        self.log.info(
            "Holding the lease of '%s' (%s, renewed every %d s)",
            self.model_name,
            self.store.describe(self.key),
            self.seconds // 3,
        )
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True)
        self._renewer.start()

    def _write(self, expected_etag: str | None, released: bool = False) -> bool:
        body = self._body(released)
        if not self.store.put_if(self.key, body, expected_etag):
            return False
        info = self.store.head(self.key)
        self.etag = info.etag if info else None
        return True

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self._write(self.etag):
                    self.log.error("Lost the lease of '%s' to another run", self.model_name)
                    return
            except Exception as error:  # an outage: try again at the next tick
                self.log.warning("Could not renew the lease of '%s': %s", self.model_name, error)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self._write(self.etag, released=True)
        except Exception as error:  # it expires by itself
            self.log.warning("Could not release the lease of '%s': %s", self.model_name, error)

    def __enter__(self) -> ModelLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
