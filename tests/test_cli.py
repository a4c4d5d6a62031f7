"""The command line: one-line errors that name the setting, and nothing written on bad input."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from retrainer.cli import main
from tests.conftest import digit_images, start_moto_server, write_files


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
    assert_one_line_error(err, "--EPOCHS")


def test_unknown_url_scheme(
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
