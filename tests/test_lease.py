"""One run per model at a time: the lease is a conditional write, renewed, and expires."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

import pytest

from retrainer.lease import (
    LeaseBody,
    LeaseHeld,
    LeaseLost,
    ModelLease,
    process_namespace,
)
from retrainer.storage import LocalStore, ObjectStore, S3Store
from tests.flaky_proxy import Fault, FlakyProxy


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("bucket"), "registry")


def write_lease(store: ObjectStore, **fields: object) -> None:
    values: dict[str, object] = {
        "run_id": "nightly-1",
        "host": "gpu-node-7",
        "pid": 4242,
        "taken_at": datetime.now(UTC),
        **fields,
    }
    store.put("leases/m.json", LeaseBody.model_validate(values).model_dump_json().encode())


def dead_pid() -> int:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(finished.stdout)


def test_a_second_run_is_refused_with_the_name_of_the_running_one(store: ObjectStore) -> None:
    held = pytest.raises(LeaseHeld, match=r"being retrained by run nightly-1 on .* \(pid \d+\)")
    with ModelLease(store, "m", "nightly-1", seconds=60), held:
        ModelLease(store, "m", "manual-2", seconds=60).acquire()
    with ModelLease(store, "m", "manual-2", seconds=60):  # released: free again
        pass


def test_a_lease_past_its_seconds_but_within_the_clocks_margin_expires_in_0_s_not_a_day(
    store: ObjectStore,
) -> None:
    write_lease(store, seconds=1)
    time.sleep(1.5)  # past its second, inside the margin for the store's clock resolution
    with pytest.raises(LeaseHeld, match=r"expires in 0 s unless"):
        ModelLease(store, "m", "impatient", seconds=60).acquire()


def test_every_renewal_is_new_bytes_so_a_takeover_decided_on_an_older_read_is_refused(
    store: ObjectStore,
) -> None:
    with ModelLease(store, "m", "nightly-1", seconds=3):  # renewed every second
        stale = store.head("leases/m.json")
        time.sleep(1.6)
        renewed = store.head("leases/m.json")
        assert stale is not None and renewed is not None
        assert renewed.etag != stale.etag
        assert not store.put_if("leases/m.json", b'{"run_id": "usurper"}', stale.etag)


def test_a_lease_that_was_not_renewed_expires_by_the_stores_clock(store: ObjectStore) -> None:
    write_lease(store, seconds=1)
    with pytest.raises(LeaseHeld):
        ModelLease(store, "m", "too-early", seconds=60).acquire()
    time.sleep(4)  # the lease's second, and the resolution of the store's times
    with ModelLease(store, "m", "next-night", seconds=60):
        assert LeaseBody.model_validate_json(store.get("leases/m.json")).run_id == "next-night"


def test_a_worker_whose_clock_is_ahead_cannot_take_a_live_lease(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    class AheadClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> AheadClock:
            return cls.fromtimestamp(time.time() + 360, tz)

    with ModelLease(store, "m", "nightly-1", seconds=60):
        monkeypatch.setattr("retrainer.lease.datetime", AheadClock)
        with pytest.raises(LeaseHeld, match="nightly-1"):
            ModelLease(store, "m", "six-minutes-ahead", seconds=60).acquire()


def test_a_live_lease_of_another_machine_is_respected(store: ObjectStore) -> None:
    write_lease(store, host="gpu-node-7")
    with pytest.raises(LeaseHeld, match="gpu-node-7"):
        ModelLease(store, "m", "manual", seconds=60).acquire()


def test_the_lease_of_a_killed_process_on_this_machine_is_taken_at_once(
    store: ObjectStore,
) -> None:
    write_lease(
        store, host=socket.gethostname(), pid=dead_pid(), process_namespace=process_namespace()
    )
    with ModelLease(store, "m", "resumed", seconds=60):
        pass


def test_a_container_sharing_the_host_name_cannot_declare_a_live_holder_dead(
    store: ObjectStore,
) -> None:
    # The holder's pid is not in our process namespace: that it is gone here proves nothing.
    write_lease(
        store, host=socket.gethostname(), pid=dead_pid(), process_namespace="other-container"
    )
    with pytest.raises(LeaseHeld, match="nightly-1"):
        ModelLease(store, "m", "neighbour", seconds=60).acquire()


def test_the_lease_is_renewed_while_the_run_lives(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with ModelLease(store, "m", "long-run", seconds=3):
        time.sleep(3)  # renewed every second: written again within the last two
        info = store.head("leases/m.json")
        assert info is not None and info.age is not None and info.age < timedelta(seconds=2)
        with pytest.raises(LeaseHeld, match="long-run"):
            ModelLease(store, "m", "intruder", seconds=3).acquire()
    assert LeaseBody.model_validate_json(store.get("leases/m.json")).released


def test_a_holder_that_cannot_renew_stops_before_its_next_write(
    bucket: str,
    flaky: Callable[[Fault], FlakyProxy],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    outage = threading.Event()
    flaky(lambda method, path: "drop" if outage.is_set() and "/leases/" in path else "pass")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3Store(bucket, "registry")
    with ModelLease(store, "m", "nightly", seconds=3) as lease:
        guarded = lease.guard(store)
        guarded.put("models/m/before.json", b"{}")
        outage.set()  # the lease cannot be renewed; other writes would still go through
        time.sleep(2.5)
        model = tmp_path / "model.keras"
        model.write_bytes(b"weights")
        # Every kind of write stops: a put, an upload (a model file), a compare-and-swap, a delete.
        writes = [
            lambda: guarded.put("models/m/during.json", b"{}"),
            lambda: guarded.upload("models/m/model.keras", model),
            lambda: guarded.put_if("models/m/champion.json", b"{}", None),
            lambda: guarded.delete("models/m/before.json"),
        ]
        for write in writes:
            with pytest.raises(LeaseLost, match=r"could not be renewed for \d+ s"):
                write()
        assert not store.exists("models/m/during.json")
        assert not store.exists("models/m/model.keras")
        assert not store.exists("models/m/champion.json")
        assert store.exists("models/m/before.json")
        outage.clear()
        time.sleep(1.5)  # renewed by compare-and-swap on our own ETag: still ours
        guarded.put("models/m/after.json", b"{}")
