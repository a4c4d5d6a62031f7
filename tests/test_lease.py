"""One run per model at a time: the lease is a conditional write, renewed, and expires."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retrainer.lease import LeaseBody, LeaseHeld, ModelLease
from retrainer.storage import LocalStore, ObjectStore, S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("bucket"), "registry")


def write_lease(store: ObjectStore, **fields: object) -> None:
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "run_id": "nightly-1",
        "host": "gpu-node-7",
        "pid": 4242,
        "taken_at": now,
        "expires_at": now + timedelta(minutes=5),
        **fields,
    }
    store.put("leases/m.json", LeaseBody.model_validate(values).model_dump_json().encode())


def test_a_second_run_is_refused_with_the_name_of_the_running_one(store: ObjectStore) -> None:
    held = pytest.raises(LeaseHeld, match=r"being retrained by run nightly-1 on .* \(pid \d+\)")
    with ModelLease(store, "m", "nightly-1", seconds=60), held:
        ModelLease(store, "m", "manual-2", seconds=60).acquire()
    with ModelLease(store, "m", "manual-2", seconds=60):  # released: free again
        pass


def test_a_lease_that_was_not_renewed_expires(store: ObjectStore) -> None:
    write_lease(store, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with ModelLease(store, "m", "next-night", seconds=60):
        assert LeaseBody.model_validate_json(store.get("leases/m.json")).run_id == "next-night"


def test_a_live_lease_of_another_machine_is_respected(store: ObjectStore) -> None:
    write_lease(store, host="gpu-node-7")
    with pytest.raises(LeaseHeld, match="gpu-node-7"):
        ModelLease(store, "m", "manual", seconds=60).acquire()


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_at_once(
    store: ObjectStore,
) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    write_lease(store, host=socket.gethostname(), pid=int(finished.stdout))
    with ModelLease(store, "m", "resumed", seconds=60):
        pass


def test_the_lease_is_renewed_while_the_run_lives(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with ModelLease(store, "m", "long-run", seconds=3):
        time.sleep(5)  # without renewals (every second) the lease would have expired by now
        lease = LeaseBody.model_validate_json(store.get("leases/m.json"))
        assert lease.expires_at > datetime.now(UTC)
        with pytest.raises(LeaseHeld, match="long-run"):
            ModelLease(store, "m", "intruder", seconds=3).acquire()
    assert LeaseBody.model_validate_json(store.get("leases/m.json")).released
