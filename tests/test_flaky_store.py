"""Every read and write survives what real object stores do: 503 SlowDown, dropped connections,
and a conditional write that landed but whose answer was lost. Real HTTP all the way: boto3 talks
to a misbehaving proxy in front of the S3 test server; nothing in boto3 is patched."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from retrainer.champion import ChampionUnavailable
from retrainer.data.local import split_here
from retrainer.evaluation import evaluate
from retrainer.models import build_default_model
from retrainer.registry import ModelRegistry
from retrainer.settings import GateSettings, TrainingConfig
from retrainer.storage import (
    ConditionalWritesIgnored,
    LocalStore,
    ObjectNotFound,
    S3Store,
)
from tests.conftest import digit_images, publish_stub_version, write_files
from tests.flaky_proxy import Fault, FlakyProxy, always_for, every, first_n_for


def test_every_store_operation_survives_503s_and_dropped_connections(
    bucket: str, flaky: Callable[[Fault], FlakyProxy], tmp_path: Path
) -> None:
    proxy = flaky(every(3, ["slowdown", "drop"]))
    store = S3Store(bucket, "flaky")
    for key, image in digit_images(classes=2, per_class=10).items():
        store.put(f"data/{key}", image)
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 1000)
    store.upload("models/model.bin", source)

    assert len(list(store.list("data/"))) == 20
    assert store.get("data/0/004.png") == digit_images(classes=1, per_class=5)["0/004.png"]
    store.download("models/model.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    config = TrainingConfig(image_size=8, validation_fraction=0.3, test_fraction=0.3)
    data_split = split_here(
        f"s3://{bucket}/flaky/data", f"s3://{bucket}/flaky", tmp_path, config, 1, 0.0
    )
    assert data_split.train_count + data_split.validation_count + data_split.test_count == 20
    served = [fault.split()[0] for fault in proxy.faults_served]
    assert served.count("slowdown") >= 5 and served.count("drop") >= 5, proxy.faults_served


@pytest.mark.parametrize("first_champion", [True, False])
def test_a_promotion_whose_answer_was_lost_is_recognised_as_done(
    bucket: str, flaky: Callable[[Fault], FlakyProxy], first_champion: bool
) -> None:
    registry = ModelRegistry(S3Store(bucket, "registry"), "m")
    for version in ("v1", "v2"):
        publish_stub_version(registry, version, {}, ["a", "b"])
    if not first_champion:
        registry.promote("v1", "run-1", "passed", None)
    _, etag = registry.read_champion()

    proxy = flaky(first_n_for("PUT", "champion.json", "lose-answer", 1))
    version = "v1" if first_champion else "v2"
    champion = ModelRegistry(S3Store(bucket, "registry"), "m").promote(
        version, "run-2", "passed", etag
    )

    assert proxy.faults_served == [
        "lose-answer PUT /" + f"{bucket}/registry/models/m/champion.json"
    ]
    assert champion.version == version
    stored = boto3.client("s3").get_object(Bucket=bucket, Key="registry/models/m/champion.json")
    assert version in stored["Body"].read().decode()


def test_a_store_that_ignores_conditional_writes_is_refused(
    bucket: str, flaky: Callable[[Fault], FlakyProxy]
) -> None:
    honest = S3Store(bucket, "honest")
    honest.prove_conditional_writes()
    assert honest.exists("_retrainer/conditional-writes-proven.json"), "the proof is remembered"

    proxy = flaky(always_for("PUT", "/", "ignore-conditions"))
    with pytest.raises(ConditionalWritesIgnored, match="ignores If-None-Match"):
        S3Store(bucket, "lax").prove_conditional_writes()
    assert proxy.faults_served
    assert not list(S3Store(bucket, "lax").list()), "the probe left objects behind"


def test_the_proof_holds_for_its_endpoint_only_so_a_lax_gateway_later_is_refused(
    bucket: str, flaky: Callable[[Fault], FlakyProxy]
) -> None:
    S3Store(bucket, "registry").prove_conditional_writes()  # the store, reached directly
    flaky(always_for("PUT", "/", "ignore-conditions"))  # later, behind a gateway that drops If-*
    with pytest.raises(ConditionalWritesIgnored, match="ignores If-None-Match"):
        S3Store(bucket, "registry").prove_conditional_writes()


def test_a_proof_older_than_a_day_is_taken_again(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.prove_conditional_writes()
    proof = tmp_path / "store" / "_retrainer" / "conditional-writes-proven.json"
    two_days_ago = time.time() - 2 * 86400
    os.utime(proof, (two_days_ago, two_days_ago))
    store.prove_conditional_writes()
    assert proof.stat().st_mtime > two_days_ago + 86400  # probed and written again


def test_racing_first_promotions_on_a_lax_store_are_stopped_before_any_promotion(
    bucket: str,
    flaky: Callable[[Fault], FlakyProxy],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from retrainer.cli import main

    flaky(always_for("PUT", "/", "ignore-conditions"))
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/registry")
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "d", {"a/1.png": b"x"})))

    assert main(["run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: RETRAINER_STORE_URL: s3://") and "ignores If-None-Match" in line
    assert not list(S3Store(bucket, "registry").list("models/"))


@pytest.mark.parametrize("action", ["conflict", "conflict-after-write"])
def test_a_409_is_retried_and_the_outcome_is_what_the_champion_pointer_holds(
    bucket: str, flaky: Callable[[Fault], FlakyProxy], action: str
) -> None:
    registry = ModelRegistry(S3Store(bucket, "registry"), "m")
    for version in ("v1", "v2"):
        publish_stub_version(registry, version, {"model.keras": b"w"}, ["a", "b"])
    registry.promote("v1", "run-1", "passed", None)
    _, etag = registry.read_champion()

    # "conflict": nothing written, then the retry goes through. "conflict-after-write": the
    # first attempt landed but was answered 409, and its retries are refused (412) as the object
    # changed: what champion.json holds says the run is the champion all the same.
    proxy = flaky(first_n_for("PUT", "champion.json", action, 2))
    champion = ModelRegistry(S3Store(bucket, "registry"), "m").promote(
        "v2", "run-2", "passed", etag
    )

    assert len(proxy.faults_served) >= 2
    assert champion.version == "v2"
    assert [entry.version for entry in champion.previous] == ["v1"]
    assert registry.read_champion()[0] == champion


def test_a_champion_model_that_stays_unreachable_fails_the_gate_closed(
    bucket: str,
    flaky: Callable[[Fault], FlakyProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = write_files(tmp_path / "images", digit_images(classes=2, per_class=20))
    config = TrainingConfig(image_size=16, batch_size=8, validation_fraction=0.3, test_fraction=0.3)
    data_split = split_here(str(folder), str(tmp_path / "prepared"), tmp_path / "w", config)
    build_default_model((16, 16, 3), 2).save(tmp_path / "model.keras")
    registry = ModelRegistry(S3Store(bucket, "registry"), "m")
    publish_stub_version(
        registry, "v1", {"model.keras": (tmp_path / "model.keras").read_bytes()}, ["0", "1"]
    )
    registry.promote("v1", "run-1", "passed", None)
    champion = registry.read_champion_record()

    proxy = flaky(always_for("GET", "versions/v1/model.keras", "slowdown"))
    # botocore's own retries, fewer of them so the test is quick; the outage outlasts them all.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    unreachable = ModelRegistry(S3Store(bucket, "registry"), "m")

    with pytest.raises(ChampionUnavailable, match="could not be loaded, so nothing is promoted"):
        evaluate(
            tmp_path / "model.keras",
            data_split,
            unreachable,
            champion,
            tmp_path / "models",
            GateSettings(),
            seed=0,
        )
    assert len(proxy.faults_served) >= 2, "the outage was not served"


def test_missing_keys_answered_403_as_s3_does_without_list_permission_count_as_missing(
    bucket: str, flaky: Callable[[Fault], FlakyProxy]
) -> None:
    S3Store(bucket, "registry").put("present.json", b"{}")
    # S3 answers 403 for a missing key to a caller whose s3:ListBucket is limited by s3:prefix.
    proxy = flaky(lambda method, path: "missing-as-403" if method in ("HEAD", "GET") else "pass")
    store = S3Store(bucket, "registry")

    assert store.head("champion.json") is None  # the first night: no champion yet
    assert store.head("present.json") is not None
    with pytest.raises(ObjectNotFound):
        store.get("checkpoints/m/k/latest.json")  # a new work's checkpoint pointer
    assert ModelRegistry(store, "m").read_champion_record() is None
    assert store.get("present.json") == b"{}"
    assert any(fault.startswith("403 for a 404 HEAD") for fault in proxy.faults_served)
    assert any(fault.startswith("403 for a 404 GET") for fault in proxy.faults_served)
