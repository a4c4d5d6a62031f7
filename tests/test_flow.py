"""The retraining flow end to end: real Prefect API, real TensorFlow training, real stores."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import boto3
import keras
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact

from flows.prepare import prepare_dataset, task_runner_for
from flows.retrain import retrain
from retrainer.cli import main
from retrainer.data import preparation
from retrainer.data.inputs import input_fn
from retrainer.data.listing import list_data
from retrainer.data.local import split_here
from retrainer.data.splits import subset_of
from retrainer.freshness import identify_work
from retrainer.layout import PREPARED, READERS
from retrainer.lease import ModelLease
from retrainer.records import Publication
from retrainer.registry import ModelRegistry
from retrainer.report import artifact_key
from retrainer.serving import SERVING_SIGNATURE
from retrainer.settings import TrainingConfig, load_settings
from retrainer.storage import LocalStore, ObjectStore, S3Store
from tests.bad_files import bad_checksum_png, decompression_bomb_png, one_bit_bmp, rle8_bmp
from tests.conftest import digit_images, publish_stub_version, put_all, write_files
from tests.flaky_proxy import Fault, FlakyProxy, RequestLog, always_for

pytestmark = pytest.mark.usefixtures("prefect_api")

DATA = digit_images(classes=3, per_class=60)
PUBLISHED_FILES = {
    "model.keras",
    "history.json",
    "metrics.json",
    "decision.json",
    "training_curves.png",
    "confusion_matrix.png",
    "manifest.json",
}


@pytest.fixture
def fast_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRAINER_IMAGE_SIZE", "16")
    monkeypatch.setenv("RETRAINER_EPOCHS", "12")
    monkeypatch.setenv("RETRAINER_BATCH_SIZE", "16")
    monkeypatch.setenv("RETRAINER_LEARNING_RATE", "0.003")
    monkeypatch.setenv("RETRAINER_GATE__ACCURACY__THRESHOLD", "0.8")


def night(**parameters: object) -> tuple[Publication, UUID]:
    """A night through the flow, and its flow run's id: the tests of a run share one Prefect API,
    so what a test reads of it is its own runs'."""
    state = retrain(return_state=True, **parameters)
    return state.result(), state.state_details.flow_run_id


def artifacts_of(flow_run_ids: list[UUID], key: str) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids),
            )
        )


def run_id_of(report_url: str) -> UUID:
    """The flow run a `retrainer run --json` report links to."""
    return UUID(report_url.split("/runs/flow-run/")[1].split("?")[0])


def assert_champion_is_complete(store: ObjectStore, model_name: str, tmp_path: Path) -> str:
    """Follow champion.json as a reader would: every file is there with its recorded hash."""
    champion = json.loads(store.get(f"models/{model_name}/champion.json"))
    prefix = f"models/{model_name}/versions/{champion['version']}/"
    manifest = json.loads(store.get(prefix + "manifest.json"))
    names = set(manifest["files"])
    folders = ("tensorboard/", "saved_model/")
    assert {name for name in names if not name.startswith(folders)} == PUBLISHED_FILES - {
        "manifest.json"
    }
    assert any(name.startswith("tensorboard/train/events.out.tfevents") for name in names)
    assert {"saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= names
    assert manifest["serving"]["inputs"] == {"image_bytes": SERVING_SIGNATURE.inputs["image_bytes"]}
    assert manifest["preprocessing"]["image_size"] == 16
    assert manifest["preprocessing"]["resize_method"] == "bilinear"
    for name, recorded in manifest["files"].items():
        data = store.get(prefix + name)
        assert hashlib.sha256(data).hexdigest() == recorded["sha256"]
        assert len(data) == recorded["size"]
    for field in ("data_fingerprint", "parameters", "git_commit", "packages", "started_at"):
        assert manifest[field]
    history = json.loads(store.get(prefix + "history.json"))
    assert len(history["val_accuracy"]) == manifest["epochs_run"] == 12
    model_file = tmp_path / "champion.keras"
    model_file.write_bytes(store.get(prefix + "model.keras"))
    return str(model_file)


def accuracy_on_test_split(model_file: str, data_url: str, tmp_path: Path) -> float:
    """Score a model on the test split, built by the project's own input function."""
    config = TrainingConfig(image_size=16, batch_size=16)
    data_split = split_here(data_url, str(tmp_path / "eval-store"), tmp_path / "eval-work", config)
    model = keras.models.load_model(model_file)
    _, accuracy = model.evaluate(input_fn(data_split, "test", shuffle=False), verbose=0)
    return float(accuracy)


def reader_marks(store: LocalStore) -> list[str]:
    """The runs marked as reading a prepared dataset now (gc keeps its shards while any is)."""
    return [info.key for info in store.list(PREPARED) if f"/{READERS}" in info.key]


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_flow_on_local_store_publishes_and_promotes_a_champion_that_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_folder = write_files(tmp_path / "images", DATA)
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", data_folder.as_uri())

    publication, first_run = night()

    assert publication.promoted
    store = LocalStore(tmp_path / "store")
    assert reader_marks(store) == []  # gc may collect the dataset's unused shards again
    model_file = assert_champion_is_complete(store, "demo", tmp_path)
    accuracy = accuracy_on_test_split(model_file, str(data_folder), tmp_path)
    assert accuracy >= 0.8
    metrics = json.loads(store.get(f"models/demo/versions/{publication.version}/metrics.json"))
    assert metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert 0.0 < metrics["val_accuracy"] <= 1.0
    served = {info.key for info in store.list("serving/demo/")}
    (number,) = {key.split("/")[2] for key in served}  # one promotion, one served version
    assert f"serving/demo/{number}/saved_model.pb" in served

    # The champion's SavedModel, from the command line, on image files and one that is not.
    (tmp_path / "notes.png").write_text("not an image")
    images = [data_folder / "0/000.png", data_folder / "2/001.png", tmp_path / "notes.png"]
    capsys.readouterr()
    assert main(["predict", *map(str, images)]) == 1  # one file could not be classified
    lines = capsys.readouterr().out.splitlines()
    for image, line in zip(images[:2], lines, strict=False):
        assert re.fullmatch(rf"{re.escape(str(image))}: [012] \(\d\.\d{{3}}\)", line), line
    assert lines[2] == (
        f"{images[2]}: refused: not a JPEG, PNG, GIF or BMP file (the formats training accepts)"
    )
    assert lines[3] == f"(version {publication.version} of 'demo')"
    assert main(["predict", "--json", *map(str, images)]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["version"] == publication.version
    classes = [line.rsplit(": ", 1)[1].split()[0] for line in lines[:2]]  # "path: 2 (0.987)"
    assert [image.get("class") for image in answer["images"]] == [*classes, None]
    assert answer["images"][2]["problem"].startswith("refused: not a JPEG")

    assert main(["run"]) == 0  # what a person reads: the last line says what the night did
    assert (
        capsys.readouterr()
        .out.splitlines()[-1]
        .startswith("Skipped: nothing changed since champion")
    )
    assert main(["run", "--json"]) == 0  # what a script reads
    unchanged = json.loads(capsys.readouterr().out)
    assert (unchanged["state"], unchanged["status"]) == ("Skipped", "skipped")
    assert unchanged["champion_version"] == publication.version
    assert "nothing changed since champion" in unchanged["message"]
    assert re.search(r"/runs/flow-run/[0-9a-f-]{36}\?tab=Artifacts$", unchanged["report"])
    assert len(ModelRegistry(store, "demo").list_versions()) == 1
    skipped_run = run_id_of(unchanged["report"])
    (report,) = artifacts_of([skipped_run], "retrain-demo")
    assert report.data.startswith("# `demo`: Skipped") and publication.version in report.data
    # Each model keeps its own history of data summaries, one per night that read the data.
    (summary,) = artifacts_of([first_run, skipped_run], "data-summary-demo")
    assert summary.flow_run_id == first_run


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_flow_on_s3_promotes_then_a_failing_gate_leaves_the_champion_untouched(
    bucket: str,
    flaky: Callable[[Fault], FlakyProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put_all(bucket, "incoming/images", DATA)
    requests = RequestLog()
    flaky(requests)  # every request of the runs now goes through a counting proxy
    source_reads = f"/{bucket}/incoming/images/"
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/registry")
    monkeypatch.setenv("RETRAINER_DATA_URL", f"s3://{bucket}/incoming/images")
    monkeypatch.setenv("RETRAINER_MODEL_NAME", "digits")
    secret = f"never-shown-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    first, first_run = night()
    assert first.promoted
    assert requests.count("GET", source_reads) == len(DATA)  # each image read once
    store = S3Store(bucket, "registry")
    assert_champion_is_complete(store, "digits", tmp_path)
    champion_before = store.get("models/digits/champion.json")

    # A cold worker (an empty disk) on the next night: the prepared dataset is in the store.
    monkeypatch.setenv("RETRAINER_CACHE_DIR", str(tmp_path / "cold-worker"))
    requests.clear()
    second, second_run = night(epochs=1, min_accuracy=1.0)

    assert requests.count("GET", source_reads) == 0
    assert requests.count("GET", f"/{bucket}/registry/prepared/") >= 2  # the index and a shard
    assert not second.promoted
    assert "test_accuracy" in second.message and "rejected" in second.message
    assert store.get("models/digits/champion.json") == champion_before
    rejected = f"models/digits/versions/{second.version}/"
    uploaded = {info.key[len(rejected) :] for info in store.list(rejected)}
    folders = ("tensorboard/", "saved_model/")
    assert {name for name in uploaded if not name.startswith(folders)} == PUBLISHED_FILES
    decision = json.loads(store.get(rejected + "decision.json"))
    assert decision["passed"] is False
    assert decision["champion_version"] == first.version
    assert decision["champion_note"] == (
        f"compared with champion {first.version} on the same test images"
    )
    first_metrics = json.loads(store.get(f"models/digits/versions/{first.version}/metrics.json"))
    assert decision["champion"]["accuracy"] == pytest.approx(first_metrics["test_accuracy"])
    assert {test["metric"] for test in decision["paired_tests"]} >= {"accuracy", "macro_f1", "loss"}
    summaries = ModelRegistry(store, "digits").list_versions()
    assert [summary.is_champion for summary in summaries] == [True, False]
    assert_secret_appears_nowhere(
        secret, store, [first.version, second.version], [first_run, second_run]
    )

    # The same work again (same data, parameters, code) would be rejected again: not retrained.
    requests.clear()
    again = retrain(epochs=1, min_accuracy=1.0)
    assert again.status == "skipped"
    assert requests.count("GET", source_reads) == 0
    assert f"as version {second.version} and rejected: test_accuracy" in again.message
    assert len(ModelRegistry(store, "digits").list_versions()) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_a_rolled_back_work_is_not_retrained_and_promoted_again_unless_forced(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator's rollback sticks over the following nights; new data or --force trains."""
    for name in ("ACCURACY__THRESHOLD", "ACCURACY__MAX_REGRESSION", "MACRO_F1__MAX_REGRESSION"):
        monkeypatch.setenv(f"RETRAINER_GATE__{name}", "0" if "THRESHOLD" in name else "1")
    monkeypatch.setenv("RETRAINER_GATE__MAX_CLASS_RECALL_DROP", "1")
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    data_folder = tmp_path / "images"
    monkeypatch.setenv("RETRAINER_DATA_URL", data_folder.as_uri())
    write_files(data_folder, {key: data for key, data in DATA.items() if key[2:] < "030"})
    first = retrain(epochs=1)
    write_files(data_folder, DATA)
    second = retrain(epochs=1)
    assert first.promoted and second.promoted

    assert main(["rollback", "--reason", "misclassifies class 2"]) == 0
    assert "withdrawn" in capsys.readouterr().out

    night = retrain(epochs=1)
    assert night.status == "skipped"
    assert f"made version {second.version}" in night.message
    assert "misclassifies class 2" in night.message
    assert night.champion_version == first.version

    caplog.clear()
    forced = retrain(epochs=1, force=True)
    assert forced.status != "skipped" and forced.version not in (first.version, second.version)
    assert "Forced: training anyway" in caplog.text


def assert_secret_appears_nowhere(
    secret: str, store: ObjectStore, versions: list[str | None], flow_run_ids: list[UUID]
) -> None:
    """Not in an uploaded file, a log line or an artifact of the runs."""
    for info in store.list():
        assert secret.encode() not in store.get(info.key), info.key
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids))
        )
    artifacts = artifacts_of(flow_run_ids, "retrain-digits")
    assert logs and artifacts
    assert all(version in str([a.data for a in artifacts]) for version in versions)
    assert secret not in " ".join(log.message for log in logs)
    assert secret not in str([artifact.data for artifact in artifacts])


@pytest.mark.slow
def test_bad_data_fails_the_run_at_once_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    one_class = {key: data for key, data in DATA.items() if key.startswith("0/")}
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "images", one_class)))

    state = retrain(return_state=True)

    assert state.is_failed()
    assert "a classifier needs at least two" in str(state.message)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    (validate_run,) = [run for run in task_runs if run.name.startswith("validate data")]
    assert validate_run.run_count == 1, "bad data was retried"
    assert not (tmp_path / "store" / "models").exists()
    assert reader_marks(LocalStore(tmp_path / "store")) == []  # however the night ended
    (report,) = artifacts_of([flow_run_id], artifact_key("demo"))
    assert str(report.data).startswith("# `demo`: Failed\n\nfound 1 class folder(s)")
    assert f"Listed: {len(one_class)} file(s) in 1 folder(s) (0: {len(one_class)})." in report.data

    capsys.readouterr()
    assert main(["run", "--json"]) == 1  # what a script reads of a failed night
    failed = json.loads(capsys.readouterr().out)
    assert failed["state"] == "Failed" and "a classifier needs at least two" in failed["message"]


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_a_champion_that_cannot_be_scored_fails_the_run_and_promotes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "images", DATA)))
    monkeypatch.setenv("RETRAINER_WARM_START", "never")  # so the gate is the first to read it
    first = retrain()
    assert first.promoted
    store = LocalStore(tmp_path / "store")
    # The champion's model file no longer matches its manifest (bit rot, a bad copy).
    store.put(f"models/demo/versions/{first.version}/model.keras", b"not the model")
    champion_before = store.get("models/demo/champion.json")

    state = retrain(epochs=1, min_accuracy=0.0, force=True, return_state=True)

    assert state.is_failed()
    assert f"champion {first.version} could not be loaded, so nothing is promoted" in str(
        state.message
    )
    assert store.get("models/demo/champion.json") == champion_before


@pytest.mark.slow
def test_a_second_run_of_the_same_model_is_refused_naming_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "images", DATA)))
    store = LocalStore(tmp_path / "store")
    with ModelLease(store, "demo", "nightly-on-gpu-node", seconds=300):
        state = retrain(return_state=True)
    assert state.is_failed()
    assert "'demo' is being retrained by run nightly-on-gpu-node" in str(state.message)
    assert not list(store.list("models/"))


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_an_early_stopped_candidate_is_gated_on_images_early_stopping_never_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_folder = write_files(tmp_path / "images", DATA)
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data_folder))
    monkeypatch.setenv("RETRAINER_EPOCHS", "40")
    monkeypatch.setenv("RETRAINER_EARLY_STOPPING_PATIENCE", "1")

    publication = retrain()

    store = LocalStore(tmp_path / "store")
    prefix = f"models/demo/versions/{publication.version}/"
    history = json.loads(store.get(prefix + "history.json"))
    decision = json.loads(store.get(prefix + "decision.json"))
    assert len(history["val_loss"]) < 40, "training did not stop early"
    subsets = {key: subset_of(key, 0.15, 0.2) for key in DATA}
    test_images = [key for key, subset in subsets.items() if subset == "test"]
    seen_by_early_stopping = [key for key, subset in subsets.items() if subset == "validation"]
    assert test_images and seen_by_early_stopping
    assert not set(test_images) & set(seen_by_early_stopping)
    assert decision["test_images"] == len(test_images)
    assert decision["candidate_validation"] is not None  # reported beside the test figure


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_new_classes_with_on_class_change_retrain_train_a_new_model_judged_by_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "images", DATA)))
    first = retrain()
    assert first.promoted

    other = {f"9/{key[2:]}": data for key, data in digit_images(10, 60).items() if key[0] == "9"}
    three_to_nine = {key: data for key, data in DATA.items() if not key.startswith("2/")} | other
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "new", three_to_nine)))
    refused = retrain(return_state=True)
    assert refused.is_failed()
    assert "RETRAINER_ON_CLASS_CHANGE=retrain" in str(refused.message)

    monkeypatch.setenv("RETRAINER_ON_CLASS_CHANGE", "retrain")
    second = retrain()

    store = LocalStore(tmp_path / "store")
    decision = json.loads(store.get(f"models/demo/versions/{second.version}/decision.json"))
    assert "was trained on classes ['0', '1', '2']" in decision["champion_note"]
    assert "decided by the absolute thresholds alone" in decision["champion_note"]
    assert decision["champion"] is None and decision["paired_tests"] == []
    manifest = json.loads(store.get(f"models/demo/versions/{second.version}/manifest.json"))
    assert manifest["class_names"] == ["0", "1", "9"]
    assert manifest["started_from"].startswith("a fresh model")


@pytest.mark.slow
@pytest.mark.usefixtures("fast_training")
def test_a_strangers_bucket_trains_on_the_good_images_and_lists_every_bad_object(
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = {
        "0/bomb.png": decompression_bomb_png(),
        "0/one-bit.bmp": one_bit_bmp(),
        "1/rle.bmp": rle8_bmp(),
        "1/bad-crc.png": bad_checksum_png(),
        "1/empty.png": b"",
        "2/notes.png": b"meeting notes, not a picture",
        "stray.png": DATA["0/000.png"],
        "0//double-slash.png": DATA["0/001.png"],
        "0/./dot.png": DATA["0/002.png"],
        "0/" + "n" * 300 + ".png": DATA["0/003.png"],
        "2/forbidden.png": DATA["2/000.png"],
    }
    client = boto3.client("s3")
    for key, data in {**DATA, **bad}.items():
        client.put_object(Bucket=bucket, Key=f"incoming/{key}", Body=data)
    client.put_object(Bucket=bucket, Key="incoming/1/", Body=b"")  # the console's folder marker
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    proxy = FlakyProxy(endpoint, always_for("GET", "forbidden.png", "forbidden"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/registry")
    monkeypatch.setenv("RETRAINER_DATA_URL", f"s3://{bucket}/incoming")
    try:
        assert main(["run", "--json"]) == 0
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    night_run = run_id_of(json.loads(capsys.readouterr().out)["report"])

    store = S3Store(bucket, "registry")
    (version,) = {info.key.split("/")[3] for info in store.list("models/demo/versions/")}
    manifest = json.loads(store.get(f"models/demo/versions/{version}/manifest.json"))
    trained = manifest["train_images"] + manifest["validation_images"] + manifest["test_images"]
    assert trained == len(DATA), "a good image was left out, or a bad one trained"
    (report,) = artifacts_of([night_run], "retrain-demo")
    listed = str(report.data)
    for key in bad:
        assert f"`{key}`" in listed, key
    assert "`2/forbidden.png`: listed, but its download is forbidden (AccessDenied)" in listed
    assert "`1/bad-crc.png`: does not decode: Invalid PNG data" in listed


NIGHT_WITH_NOTHING_NEW = """
import sys
from flows.prepare import prepare_dataset, task_runner_for
from flows.retrain import retrain
from retrainer.data import preparation

publication = retrain()
print("STATUS", publication.status)
print("TENSORFLOW IMPORTED", "tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_a_night_with_nothing_new_is_decided_from_one_listing_without_tensorflow(
    bucket: str,
    flaky: Callable[[Fault], FlakyProxy],
    prefect_api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    put_all(bucket, "images", DATA)
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/registry")
    monkeypatch.setenv("RETRAINER_DATA_URL", f"s3://{bucket}/images")
    # The champion is this very work: same data listing, parameters and code.
    snapshot = list_data(S3Store(bucket, "images"), tmp_path / "listing.json")
    work = identify_work(snapshot.fingerprint, load_settings().training_config())
    registry = ModelRegistry(S3Store(bucket, "registry"), "demo")
    publish_stub_version(registry, "v1", {"model.keras": b"w"}, ["0", "1", "2"], work.key)
    registry.promote("v1", "run-v1", "passed", None)
    requests = RequestLog()
    proxy = flaky(requests)

    # A cold worker: a fresh process and an empty cache folder.
    answer = subprocess.run(
        [sys.executable, "-c", NIGHT_WITH_NOTHING_NEW],
        env={
            **os.environ,
            "PREFECT_API_URL": prefect_api_url,
            "AWS_ENDPOINT_URL": proxy.url,
            "RETRAINER_CACHE_DIR": str(tmp_path / "empty"),
        },
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert "STATUS skipped" in answer.stdout, answer.stdout + answer.stderr[-3000:]
    assert "TENSORFLOW IMPORTED False" in answer.stdout
    assert requests.count("GET", f"/{bucket}/images/") == 0  # not one image downloaded
    assert any("prefix=images" in path for _, path in requests.requests)  # only listed


@pytest.mark.slow
def test_preparation_runs_its_chunks_on_a_local_two_process_dask_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    folder = write_files(tmp_path / "images", digit_images(classes=2, per_class=30))
    monkeypatch.setattr(preparation, "CHUNK_OBJECTS", 10)  # planned here: 6 chunks
    snapshot = list_data(LocalStore(folder), tmp_path / "run" / "listing.json")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        settings = load_settings(
            store_url=str(tmp_path / "store"),
            data_url=str(folder),
            image_size=16,
            dask_address=cluster.scheduler_address,
        )
        runner = task_runner_for(settings)
        prepare = prepare_dataset.with_options(task_runner=runner)
        prepared = prepare(snapshot, settings, tmp_path / "run" / "prepared-index.json")

    assert (prepared.prepared, prepared.shards_written) == (60, 6)
    assert len(prepared.read_index().shards) == 6
    assert len({task["worker"] for task in stream.data}) == 2  # both worker processes prepared
