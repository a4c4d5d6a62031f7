"""The command line: one-line errors that name the setting, and nothing written on bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import boto3
import pytest
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from retrainer.cli import build_parser, main
from retrainer.lease import ModelLease
from retrainer.registry import ModelRegistry
from retrainer.settings import RetrainParameters
from retrainer.storage import LocalStore, S3Store
from tests.conftest import digit_images, publish_stub_version, start_moto_server, write_files
from tests.flaky_proxy import Fault, FlakyProxy, always_for


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, setting: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {setting}:"), err


def test_epochs_zero_is_refused_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_EPOCHS", "0")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, "RETRAINER_EPOCHS")
    assert list(isolated_settings.iterdir()) == []


def test_bad_command_line_value_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--epochs", "0")
    assert code == 2
    assert_one_line_error(err, "--epochs")


@pytest.mark.parametrize(
    "command",
    [["promote", "../../x", "--reason", "test"], ["predict", "--version", "../x", "a.png"]],
    ids=lambda command: command[0],
)
def test_a_version_that_is_a_path_is_refused_naming_the_argument(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, command: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_code:  # argparse's refusal: usage and one error line
        main(command)
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            f"'{command[1] if command[0] == 'promote' else command[2]}' is not a version name: "
            "give one as `retrainer models` lists it"
        )
    )
    assert list(isolated_settings.iterdir()) == []


def test_an_unknown_url_scheme_is_one_line_naming_the_setting_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", "gs://bucket/models")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, "RETRAINER_STORE_URL")
    assert "unknown URL scheme 'gs://'" in err
    assert list(isolated_settings.iterdir()) == []


def test_missing_bucket_writes_nothing(
    capsys: pytest.CaptureFixture[str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.client("s3")
    for key, data in digit_images(classes=2, per_class=10).items():
        client.put_object(Bucket=bucket, Key=f"data/{key}", Body=data)
    monkeypatch.setenv("RETRAINER_STORE_URL", "s3://no-such-models-bucket/models")
    monkeypatch.setenv("RETRAINER_DATA_URL", f"s3://{bucket}/data")
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])

    code, _, err = run_cli(capsys, "run")

    assert code == 2
    assert_one_line_error(err, "RETRAINER_STORE_URL")
    assert "bucket 'no-such-models-bucket' does not exist" in err
    after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert after == before
    assert [b["Name"] for b in client.list_buckets()["Buckets"]].count("no-such-models-bucket") == 0


def test_wrong_credentials_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second server that checks signatures against its (empty) IAM user list.
    process, endpoint = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("RETRAINER_STORE_URL", "s3://models-bucket/models")
        monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "d", {})))
        code, _, err = run_cli(capsys, "run")
    finally:
        process.terminate()
        process.wait(10)
    assert code == 2
    assert_one_line_error(err, "RETRAINER_STORE_URL")
    assert "denied" in err and "credentials" in err


def test_models_lists_nothing_yet(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert "No published versions of 'demo'" in out


def test_seed_demo_is_idempotent(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path
) -> None:
    code, out, _ = run_cli(capsys, "seed-demo")
    assert code == 0 and "1797 images added" in out
    code, out, _ = run_cli(capsys, "seed-demo")
    assert code == 0 and "0 images added" in out
    digit_folders = sorted(
        p.name for p in (isolated_settings / ".retrainer/store/datasets/digits").iterdir()
    )
    assert digit_folders == [str(d) for d in range(10)]


def test_a_data_folder_that_is_not_there_is_named(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_DATA_URL", str(isolated_settings / "imagse"))
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, "RETRAINER_DATA_URL")
    assert "imagse does not exist" in err
    assert list(isolated_settings.iterdir()) == []


def test_every_command_has_its_own_handler() -> None:
    parser = build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    handlers = {name: sub.get_default("handler") for name, sub in commands.choices.items()}
    assert all(handlers.values()), handlers
    assert len(set(handlers.values())) == len(handlers)


def test_run_options_come_from_the_run_parameters_with_their_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name, shown in RetrainParameters.model_json_schema()["properties"].items():
        assert "--" + name.replace("_", "-") in out
        assert shown["description"].split()[0] in out
    assert (
        "Training epochs (>= 1, <= 1000). Empty: the worker's RETRAINER_EPOCHS, 30 unless set."
        in " ".join(out.split())
    )


def test_version_prints_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("retrainer 0.1.0")


def test_models_as_a_table_and_as_json(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path
) -> None:
    registry = ModelRegistry(LocalStore(isolated_settings / ".retrainer/store"), "demo")
    for version, accuracy in (("20261101T020000Z-aaaaaa", 0.9), ("20261102T020000Z-bbbbbb", 0.8)):
        publish_stub_version(registry, version, {"model.keras": b"w"}, ["a", "b"])
        registry.store.put(
            registry.keys.version_file(version, "metrics.json"),
            json.dumps({"test_accuracy": accuracy, "test_loss": 0.3}).encode(),
        )
    registry.store.put(
        registry.keys.version_file("20261102T020000Z-bbbbbb", "decision.json"),
        b'{"passed": false, "reason": "rejected: test_accuracy 0.8000 < 0.8500"}',
    )
    registry.promote("20261101T020000Z-aaaaaa", "run", "passed", None)

    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[-2].startswith("* 20261101T020000Z-aaaaaa") and lines[-2].endswith("champion")
    assert "0.9000" in lines[-2] and "rejected: test_accuracy 0.8000 < 0.8500" in lines[-1]

    code, out, _ = run_cli(capsys, "models", "--json")
    listed = json.loads(out)
    assert [entry["is_champion"] for entry in listed] == [True, False]
    assert listed[1]["metrics"]["test_accuracy"] == 0.8


def test_a_model_factory_that_is_not_there_is_refused_before_the_run_starts(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_files(isolated_settings / "images", digit_images(classes=2, per_class=10))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data))
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_modles:tiny_cnn")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, "RETRAINER_MODEL_FACTORY")
    assert "cannot find module 'tests.user_modles'" in err
    assert not (isolated_settings / ".retrainer" / "cache").exists(), "data was fetched"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_factory_that_cannot_serve_stops_the_night_before_any_download_said_once(
    capsys: pytest.CaptureFixture[str],
    isolated_settings: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = write_files(isolated_settings / "images", digit_images(classes=2, per_class=10))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data))
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:five_outputs")
    code, out, err = run_cli(capsys, "run", "--json")
    assert code == 2
    night = json.loads(out)
    problem = (
        "RETRAINER_MODEL_FACTORY: tests.user_models:five_outputs outputs 5 values for 2 "
        "classes (the classes listed): its last layer must have num_classes units"
    )
    assert night["state"] == "Failed" and night["message"] == problem
    assert "Traceback" not in err
    # The run's log as the Prefect UI shows it: one error line, no traceback around it.
    (run_id,) = map(UUID, re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", night["report"]))
    deadline, logs = time.monotonic() + 30, []
    while not any(log.level >= logging.ERROR for log in logs) and time.monotonic() < deadline:
        time.sleep(0.5)  # the run's log reaches the API in batches
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert errors == [f"Stopped: {problem}"]
    assert not any("Traceback" in log.message for log in logs)
    assert not list((isolated_settings / ".retrainer" / "cache").rglob("*.tfrecord"))
    assert not list((isolated_settings / ".retrainer" / "store").rglob("*.tfrecord"))


def test_credentials_in_a_url_are_refused_and_never_echoed(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path
) -> None:
    code, _, err = run_cli(capsys, "run", "--data-url", "s3://AKIAEXAMPLE:s3cr3t@bucket/x")
    assert code == 2
    assert_one_line_error(err, "--data-url")
    assert "s3cr3t" not in err and "AKIAEXAMPLE" not in err
    assert "s3://***@bucket/x" in err and "AWS_PROFILE" in err
    assert list(isolated_settings.iterdir()) == []


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_endpoint_with_a_password_is_refused_at_start_up_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
    isolated_settings: Path,
    variable: str,
) -> None:
    # boto3 never uses a URL's user and password (it signs with the AWS credentials), and every
    # message naming the endpoint would carry them into logs, Prefect's database and reports.
    monkeypatch.setenv(variable, s3_env.replace("http://", "http://minio:hunter2@"))
    monkeypatch.setenv("RETRAINER_STORE_URL", "s3://models/x")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, variable)
    assert "hunter2" not in err and "http://***@127.0.0.1:" in err
    assert list(isolated_settings.iterdir()) == []


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("http://127.0.0.1:9", "check its host and port"),  # the wrong port
        ("https://{host}", "is it http://, not https://?"),  # TLS to a plain-HTTP endpoint
    ],
)
def test_an_endpoint_mistake_is_one_line_naming_aws_endpoint_url_within_seconds(
    capsys: pytest.CaptureFixture[str],
    bucket: str,
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    words: str,
) -> None:
    wrong = endpoint.format(host=s3_env.removeprefix("http://"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", wrong)
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/x")
    started = time.monotonic()
    code, _, err = run_cli(capsys, "run")
    assert time.monotonic() - started < 15  # not the minute of retries an outage gets
    assert code == 2
    assert_one_line_error(err, "RETRAINER_STORE_URL")
    assert f"AWS_ENDPOINT_URL={wrong}" in err and words in err


@pytest.mark.parametrize("bucket_name", ["My_Bucket", "ab", "-leading", "a" * 64])
def test_an_invalid_bucket_name_is_a_settings_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, bucket_name: str
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket_name}/models")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert_one_line_error(err, "RETRAINER_STORE_URL")
    assert "is not a bucket name" in err


def test_fractions_that_leave_nothing_to_train_say_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_VALIDATION_FRACTION", "0.99")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert err.strip() == (
        "error: RETRAINER_VALIDATION_FRACTION + RETRAINER_TEST_FRACTION must leave at least 10% "
        "of the images for training (got 0.99 + 0.2)"
    )


STORE_COMMANDS = [
    ["models"],
    ["verify"],
    ["gc", "--dry-run"],
    ["promote", "v1", "--reason", "r"],
    ["rollback", "--reason", "r"],
    ["repair"],
    ["predict", "image.png"],
]


@pytest.mark.parametrize(
    "command",
    [["gc"], ["promote", "v1", "--reason", "r"], ["rollback", "--reason", "r"], ["repair"]],
    ids=lambda command: command[0],
)
def test_every_command_that_changes_a_model_is_refused_while_a_night_holds_its_lease(
    capsys: pytest.CaptureFixture[str],
    isolated_settings: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(isolated_settings / "store"))
    store = LocalStore(isolated_settings / "store")
    with ModelLease(store, "demo", "nightly-1", seconds=300):
        code, _, err = run_cli(capsys, *command)
    assert code == 1
    assert err.startswith("error: model 'demo' is being retrained by run nightly-1 on ")
    # Afterwards the lease is free again: the command's own lease was released as well.
    run_cli(capsys, *command)
    with ModelLease(store, "demo", "nightly-2", seconds=300):
        pass


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda command: command[0])
def test_every_store_command_refuses_a_bad_model_name_in_one_line(
    capsys: pytest.CaptureFixture[str], isolated_settings: Path, command: list[str]
) -> None:
    code, _, err = run_cli(capsys, *command, "--model-name", "../x")
    assert code == 2
    assert_one_line_error(err, "--model-name")
    assert "'../x' is not a model name" in err


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda command: command[0])
def test_every_store_command_refuses_an_endpoint_with_a_password_without_echoing_it(
    capsys: pytest.CaptureFixture[str],
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:hunter2@127.0.0.1:9")
    monkeypatch.setenv("RETRAINER_STORE_URL", "s3://models/x")
    code, _, err = run_cli(capsys, *command)
    assert code == 2
    assert_one_line_error(err, "AWS_ENDPOINT_URL")
    assert "hunter2" not in err and "http://***@127.0.0.1:9" in err


def test_an_unexpected_store_failure_prints_its_story_and_the_error_last(
    capsys: pytest.CaptureFixture[str],
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    flaky: Callable[[Fault], FlakyProxy],
) -> None:
    proxy = flaky(always_for("GET", "/champion.json", "drop"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("RETRAINER_STORE_URL", f"s3://{bucket}/models")
    S3Store(bucket, "models").put("models/demo/champion.json", b"{}")

    code, _, err = run_cli(capsys, "models")

    assert code == 1
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("error: ConnectionClosedError: ")


@pytest.fixture
def two_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """The store of `demo` in RETRAINER_STORE_URL: versions v1 (champion) and v2, published."""
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "demo")
    for version in ("v1", "v2"):
        publish_stub_version(registry, version, {"metrics.json": b"{}"}, ["a"])
    registry.promote("v1", "run-1", "passed", None)
    return registry


def test_promote_with_repair_on_a_sound_champion_promotes_by_compare_and_swap_and_says_so(
    two_versions: ModelRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = two_versions

    code, out, err = run_cli(capsys, "promote", "v2", "--reason", "r", "--repair")

    assert (code, err) == (0, "")
    assert out.startswith("champion.json is readable: promoting as without --repair\n")
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v2"
    assert [entry.version for entry in champion.previous] == ["v1"]


def test_promote_and_rollback_from_the_cli_move_the_champion_and_say_who_and_why(
    two_versions: ModelRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = two_versions

    assert main(["promote", "v2", "--reason", "hotfix approved by Ana"]) == 0
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v2"
    assert champion.reason == "override: hotfix approved by Ana"
    assert champion.run_id.startswith("manual by ")

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "* v2 " in out and out.rstrip().endswith("champion")

    assert main(["rollback", "--reason", "regression"]) == 0
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v1"

    capsys.readouterr()
    assert main(["models"]) == 0
    (v2_row,) = [line for line in capsys.readouterr().out.splitlines() if " v2 " in line]
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    assert re.search(rf" 20  withdrawn {today}: rolled back by .*: regression$", v2_row), v2_row
    assert main(["models", "--json"]) == 0
    listed = {row["version"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["v2"]["withdrawn"]["reason"].endswith(": regression")
    assert listed["v2"]["test_images"] == 20 and listed["v1"]["withdrawn"] is None

    assert main(["promote", "nope", "--reason", "x"]) == 1
    assert "not fully published" in capsys.readouterr().err


@pytest.mark.slow
def test_a_temporary_api_that_does_not_start_in_time_is_one_line_and_a_json_object(
    isolated_settings: Path,
) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PREFECT_API", "RETRAINER_"))
    }
    environment["PREFECT_HOME"] = str(isolated_settings / "prefect")
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "1"
    data = write_files(isolated_settings / "images", digit_images(classes=2, per_class=5))
    environment["RETRAINER_DATA_URL"] = str(data)
    answer = subprocess.run(
        [sys.executable, "-m", "retrainer.cli", "run", "--json"],
        cwd=isolated_settings,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 1
    night = json.loads(answer.stdout)
    assert night["state"] == "Failed" and "did not start within 1 s" in night["message"]
    (said,) = [line for line in answer.stderr.splitlines() if line.startswith("error: ")]
    assert said.startswith("error: Prefect's temporary API did not start within 1 s")
    assert "Traceback" not in answer.stderr
