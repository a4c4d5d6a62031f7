"""Months of operation: a seeded sequence of nights and operator actions on loopback S3 (new,
unchanged and bad data, forced runs, promotions by hand, rollbacks, gc, kills of promotions and
rollbacks at random moments, a `retrainer run` killed at a random moment, lease renewals lost for
longer than the lease while gc runs, a worker whose clock is 10 minutes behind, a lost
champion.json).
After every step the store must still tell the truth: what TF Serving serves is the champion,
byte for byte; the champion's history ends with it; no rolled-back work comes back unforced;
a night that should finish does.

`TEST_MONTHS_SEED=<n>` replays one sequence; the seed is printed and named in every failure.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path

import boto3
import pytest

from flows.retrain import retrain
from retrainer.cli import main
from retrainer.errors import DataError, RegistryCorrupt
from retrainer.lease import LeaseHeld, LeaseLost, ModelLease
from retrainer.records import Publication
from retrainer.registry import ModelRegistry
from retrainer.settings import RetrainParameters
from retrainer.storage import S3Store
from tests.conftest import digit_images
from tests.flaky_proxy import Fault, FlakyProxy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

REPOSITORY = Path(__file__).resolve().parent.parent
STEPS = 22
ALL_IMAGES = digit_images(classes=3, per_class=60)
ONE_EPOCH = RetrainParameters(epochs=1)
FORCED = ONE_EPOCH.model_copy(update={"force": True})
LEASE_SECONDS = 10
# Read at import: every test runs without RETRAINER_ variables (conftest's isolated_settings).
REPLAYED_SEED = os.environ.get("TEST_MONTHS_SEED")


@dataclass
class Months:
    """The deployment under test, and what the sequence has done to it so far."""

    seed: int
    rng: random.Random
    bucket: str
    registry: ModelRegistry
    prefect_api: str
    images: int = 15  # per class in the data prefix
    withdrawn: set[str] = field(default_factory=set)  # work keys an operator took out
    direct: str = ""  # the S3 endpoint itself; the runs go through a proxy
    outage: threading.Event = field(default_factory=threading.Event)  # lease renewals dropped
    killed: bool = False  # a kill may have cut a change of champion short
    night_killed: bool = False  # a whole run is killed once per sequence (it costs a process)
    clock_skewed: bool = False  # and one worker's clock is off once (it costs two runs)
    log: list[str] = field(default_factory=list)

    def say(self, step: str) -> None:
        self.log.append(step)
        print(f"[seed {self.seed}] step {len(self.log)}: {step}")

    def context(self) -> str:
        return f"seed {self.seed} (TEST_MONTHS_SEED), steps: {self.log}"

    def upload(self, files: dict[str, bytes]) -> None:
        client = boto3.client("s3")
        for key, data in files.items():
            client.put_object(Bucket=self.bucket, Key=f"data/{key}", Body=data)

    def remove(self, keys: list[str]) -> None:
        client = boto3.client("s3")
        for key in keys:
            client.delete_object(Bucket=self.bucket, Key=f"data/{key}")

    def work_of(self, version: str) -> str:
        return self.registry.manifest(version).work_key


def images_up_to(per_class: int) -> dict[str, bytes]:
    return {key: data for key, data in ALL_IMAGES.items() if int(key[2:5]) < per_class}


def night(months: Months, parameters: RetrainParameters = ONE_EPOCH) -> Publication:
    """A night that must finish (promoted, rejected, skipped or conflict), whatever came before."""
    publication = retrain(**parameters.model_dump())
    months.killed = False  # the run finished whatever a kill left (read_champion)
    if publication.promoted and not parameters.force:
        assert publication.version is not None
        assert months.work_of(publication.version) not in months.withdrawn, months.context()
    return publication


def new_data_night(months: Months) -> None:
    if months.images >= 60:
        return unchanged_night(months)
    months.images += 5
    months.upload(images_up_to(months.images))
    outcome = night(months)
    months.say(f"{months.images} images per class: {outcome.status}")


def unchanged_night(months: Months) -> None:
    outcome = night(months)
    months.say(f"a night with no new data: {outcome.status}")


def forced_night(months: Months) -> None:
    # Half of them with a bar no model reaches: a rejection.
    bar = months.rng.choice([None, 1.0])
    outcome = night(months, ONE_EPOCH.model_copy(update={"force": True, "min_accuracy": bar}))
    months.say(f"forced night (min accuracy {bar}): {outcome.status}")


def bad_data_night(months: Months) -> None:
    per_class = months.images // 2 + 1  # a third of the files, above the allowed 20%
    junk = {f"{label}/junk-{n}.png": b"not an image" for label in "012" for n in range(per_class)}
    months.upload(junk)
    with pytest.raises(DataError, match="unusable"):
        retrain(epochs=1)
    months.remove(list(junk))
    months.say("a night with a third of the files unusable: stopped with what to fix")


def promote_by_hand(months: Months) -> None:
    champion, _ = months.registry.read_champion()
    choices = [
        summary.version
        for summary in months.registry.list_versions()
        if champion is None or summary.version != champion.version
    ]
    if not choices:
        return unchanged_night(months)
    version = months.rng.choice(choices)
    assert main(["promote", version, "--reason", "operator's choice"]) == 0, months.context()
    if champion is not None:
        months.withdrawn.add(months.work_of(champion.version))
    months.say(f"promoted {version} by hand")


def roll_back(months: Months) -> None:
    champion, _ = months.registry.read_champion()
    if champion is None or not champion.previous:
        return unchanged_night(months)
    assert main(["rollback", "--reason", "misclassifies class 2"]) == 0, months.context()
    months.withdrawn.add(months.work_of(champion.version))
    months.say(f"rolled back {champion.version}")


def collect_garbage(months: Months) -> None:
    assert main(["gc", "--keep", "1", "--older-than", "0"]) == 0, months.context()
    months.say("gc keeping one unpromoted version, nothing old")


def kill_a_change_of_champion(months: Months) -> None:
    """`retrainer promote` or `rollback` in its own process, SIGKILLed at a random moment."""
    champion, _ = months.registry.read_champion()
    versions = months.registry.published_versions()
    if champion is None or len(versions) < 2:
        return unchanged_night(months)
    if champion.previous and months.rng.random() < 0.5:
        command = ["rollback", "--reason", "killed midway"]
    else:
        command = ["promote", months.rng.choice(versions), "--reason", "killed midway"]
    process = subprocess.Popen(
        [sys.executable, "-m", "retrainer.cli", *command],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    delay = months.rng.uniform(0.5, 3.0)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Whatever it managed to do, it said nothing: the operator's word is what the store holds.
    after, _ = months.registry.read_champion()
    if after is not None and after.serving_number != champion.serving_number:
        months.withdrawn.add(months.work_of(champion.version))
    months.killed = True
    months.say(f"`retrainer {command[0]}` killed after {delay:.2f} s")


def kill_a_night(months: Months) -> None:
    """`retrainer run` on new data in its own process, SIGKILLed at a random moment (preparing,
    training, publishing or promoting); the next night must finish what it left."""
    if months.night_killed or months.images >= 60:
        return unchanged_night(months)
    months.night_killed = True
    months.images += 5
    months.upload(images_up_to(months.images))
    process = subprocess.Popen(
        [sys.executable, "-m", "retrainer.cli", "run", "--epochs", "1"],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY), "PREFECT_API_URL": months.prefect_api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    delay = months.rng.uniform(10.0, 25.0)
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    months.killed = True
    months.say(f"`retrainer run` killed after {delay:.1f} s (exit {process.returncode})")
    outcome = night(months)
    months.say(f"the next night: {outcome.status}")


def outage_longer_than_the_lease(months: Months) -> None:
    """The run's lease renewals go unanswered for longer than the lease, and gc, which still
    reaches the store, takes the lease meanwhile: the run writes nothing more as a holder (it
    stops, or it had finished), and the next night finishes."""
    if months.images >= 60:
        return unchanged_night(months)
    months.images += 5
    months.upload(images_up_to(months.images))
    gc_exit: list[int] = []

    before = months.registry.store.head("leases/months.json")
    delay = months.rng.uniform(0.5, 5.0)

    def partition() -> None:
        while months.registry.store.head("leases/months.json") == before:
            time.sleep(0.2)  # the run has not taken the lease yet
        time.sleep(delay)
        months.outage.set()
        time.sleep(LEASE_SECONDS + 4)  # expired by the store's clock (and its resolution)
        gc = subprocess.run(
            [sys.executable, "-m", "retrainer.cli", "gc", "--keep", "1", "--older-than", "0"],
            cwd=REPOSITORY,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY), "AWS_ENDPOINT_URL": months.direct},
            capture_output=True,
        )
        gc_exit.append(gc.returncode)
        months.outage.clear()

    thread = threading.Thread(target=partition)
    thread.start()
    try:
        outcome = f"finished: {retrain(epochs=1).status}"
    except LeaseLost as error:
        outcome = f"stopped: {str(error)[:60]}"
    thread.join()
    assert gc_exit == [0], months.context()  # the lapsed lease was gc's to take
    months.killed = True  # a change of champion may have been cut short by the stop
    months.say(
        f"lease renewals lost {delay:.1f} s after the run took it, for {LEASE_SECONDS + 4} s, "
        f"gc meanwhile; the run {outcome}"
    )
    unchanged_night(months)


def behind_clock_worker(months: Months, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker 10 minutes behind: cannot take a live lease, and its promotion is served."""
    if months.clock_skewed:
        return unchanged_night(months)
    months.clock_skewed = True

    class BehindClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> BehindClock:
            return cls.fromtimestamp(time.time() - 600, tz)

    other = ModelLease(months.registry.store, "months", "on-time-worker", seconds=60)
    with monkeypatch.context() as patch, other:
        for module in ("retrainer.registry", "retrainer.lease", "retrainer.publishing"):
            patch.setattr(f"{module}.datetime", BehindClock)
        with pytest.raises(LeaseHeld, match="on-time-worker"):
            retrain(epochs=1)
    with monkeypatch.context() as patch:
        for module in ("retrainer.registry", "retrainer.lease", "retrainer.publishing"):
            patch.setattr(f"{module}.datetime", BehindClock)
        outcome = night(months, FORCED)
    months.say(
        f"a worker 10 min behind: refused while another held the lease, then {outcome.status}"
    )


def lose_the_champion_pointer(months: Months) -> None:
    champion, _ = months.registry.read_champion()
    if champion is None:
        return unchanged_night(months)
    if months.rng.random() < 0.5:
        months.registry.store.delete(months.registry.keys.champion)  # a lifecycle rule
    else:
        months.registry.store.put(months.registry.keys.champion, b'{"version": "torn')
    with pytest.raises(RegistryCorrupt, match="retrainer repair"):
        retrain(epochs=1)  # never "first model"
    assert main(["repair"]) == 0, months.context()
    restored, _ = months.registry.read_champion()
    assert restored == champion, months.context()
    months.say("champion.json lost: the night stopped naming the repair; restored from history")


def check_the_truth(months: Months) -> None:
    """What serves is the champion; the history ends with it; every file of it is whole."""
    champion, _ = months.registry.read_champion()
    if champion is None:
        assert not list(months.registry.store.list("serving/")), months.context()
        return
    assert months.registry.verify_version(champion.version) == [], months.context()
    problems = months.registry.serving_problems(champion)
    if months.killed:  # only what a cut-short change leaves, and the next run repairs it
        assert all("served, not the champion's" in p or "missing" in p for p in problems), (
            f"{problems}; {months.context()}"
        )
        return
    assert problems == [], f"{problems}; {months.context()}"
    assert months.registry.read_history()[-1] == champion, months.context()


def test_months_of_operation_serve_the_champion_and_keep_the_operators_word(
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api_url: str,
    s3_env: str,
    flaky: Callable[[Fault], FlakyProxy],
) -> None:
    seed = int(REPLAYED_SEED or random.randrange(1 << 30))
    for name, value in {
        "RETRAINER_STORE_URL": f"s3://{bucket}/registry",
        "RETRAINER_DATA_URL": f"s3://{bucket}/data",
        "RETRAINER_MODEL_NAME": "months",
        "RETRAINER_CACHE_DIR": str(tmp_path / "cache"),
        "RETRAINER_IMAGE_SIZE": "8",
        "RETRAINER_BATCH_SIZE": "16",
        "RETRAINER_GATE__ACCURACY__THRESHOLD": "0",
        "RETRAINER_GATE__ACCURACY__MAX_REGRESSION": "1",
        "RETRAINER_GATE__MACRO_F1__MAX_REGRESSION": "1",
        "RETRAINER_GATE__MAX_CLASS_RECALL_DROP": "1",
        "RETRAINER_MAX_QUARANTINED_FRACTION": "0.2",
        "RETRAINER_LEASE_SECONDS": str(LEASE_SECONDS),
    }.items():
        monkeypatch.setenv(name, value)
    registry = ModelRegistry(S3Store(bucket, "registry"), "months")
    months = Months(seed, random.Random(seed), bucket, registry, prefect_api_url, direct=s3_env)
    flaky(lambda method, path: "drop" if months.outage.is_set() and "/leases/" in path else "pass")
    months.upload(images_up_to(months.images))
    steps: list[tuple[Callable[[Months], None], int]] = [
        (new_data_night, 4),
        (unchanged_night, 3),
        (forced_night, 1),
        (bad_data_night, 1),
        (promote_by_hand, 3),
        (roll_back, 4),
        (collect_garbage, 2),
        (kill_a_change_of_champion, 3),
        (kill_a_night, 2),
        (outage_longer_than_the_lease, 1),
        (lose_the_champion_pointer, 1),
        (lambda m: behind_clock_worker(m, monkeypatch), 1),
    ]
    new_data_night(months)
    for _ in range(STEPS - 1):
        step = months.rng.choices([s for s, _ in steps], weights=[w for _, w in steps])[0]
        step(months)
        check_the_truth(months)
    unchanged_night(months)  # whatever the last step left, a night repairs it
    check_the_truth(months)
