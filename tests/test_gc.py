"""`retrainer gc` removes what no reader needs and never the champion or its rollback targets."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from retrainer.cli import main
from retrainer.gc import collect_garbage
from retrainer.layout import LocalCache
from retrainer.records import WorkRecord
from retrainer.registry import ModelRegistry
from retrainer.storage import LocalStore, S3Store
from tests.conftest import publish_stub_version

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
OLD = "20260901T020000Z"
RECENT = "20261128T020000Z"


def age(path: Path, days: float) -> None:
    """Make `path` look untouched for `days` before NOW, the time every collection runs at."""
    stamp = (NOW - timedelta(days=days)).timestamp()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (stamp, stamp))


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    versions = [f"{OLD}-{n}" for n in ("a", "b", "c", "d", "e")] + [f"{RECENT}-f"]
    for version in versions:
        publish_stub_version(registry, version, {"model.keras": version.encode()}, ["x", "y"])
    for champion in (f"{OLD}-a", f"{OLD}-c"):  # a stays in the champion's history
        registry.promote(champion, "run", "passed", registry.read_champion()[1])
    registry.store.put(registry.keys.version_file(f"{OLD}-z", "model.keras"), b"half a publication")
    age(registry.store.root / registry.keys.version(f"{OLD}-z"), days=2)
    # Still uploading, maybe by a run whose lease lapsed in an outage: too young to be collected.
    registry.store.put(registry.keys.version_file(f"{RECENT}-y", "model.keras"), b"being uploaded")
    registry.write_work_record(
        WorkRecord(
            work_key="f" * 64, version=f"{OLD}-b", status="rejected", reason="r", finished_at=NOW
        )
    )
    registry.store.put(f"checkpoints/m/{'f' * 32}/latest.json", b"{}")  # finished work
    registry.store.put(f"checkpoints/m/{'a' * 32}/latest.json", b"{}")  # abandoned
    registry.store.put(f"checkpoints/m/{'b' * 32}/latest.json", b"{}")  # live or recent
    assert isinstance(registry.store, LocalStore)
    age(registry.store.root / "checkpoints/m" / ("a" * 32), days=40)
    age(registry.store.root / "checkpoints/m" / ("f" * 32), days=5)  # before the work finished
    age(registry.store.root / registry.keys.work_record("f" * 64), days=3)
    return registry


def test_gc_keeps_the_champion_its_history_the_newest_unpromoted_and_young_uploads(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    cache = LocalCache(tmp_path / "cache")
    (cache.run("crashed").root / "model.keras").parent.mkdir(parents=True)
    (cache.run("crashed").root / "model.keras").write_bytes(b"x")
    age(cache.run("crashed").root, days=2)
    (cache.run("live").root / "split.json").parent.mkdir(parents=True)
    (cache.run("live").root / "split.json").write_bytes(b"x")

    planned = collect_garbage(
        registry, cache, keep=2, older_than=timedelta(days=30), dry_run=True, now=NOW
    )
    assert registry.store.exists(registry.keys.version_file(f"{OLD}-z", "model.keras"))
    removed = collect_garbage(
        registry, cache, keep=2, older_than=timedelta(days=30), dry_run=False, now=NOW
    )

    assert removed == planned
    assert registry.published_versions() == [f"{OLD}-a", f"{OLD}-c", f"{OLD}-e", f"{RECENT}-f"]
    assert not list(registry.store.list(registry.keys.version(f"{OLD}-z")))
    assert registry.store.exists(registry.keys.version_file(f"{RECENT}-y", "model.keras"))
    assert sorted(info.key.split("/")[2] for info in registry.store.list("checkpoints/")) == [
        "b" * 32
    ]
    assert [path.name for path in cache.runs_dir.iterdir()] == ["live"]
    assert any("no manifest" in line for line in removed)
    assert any("abandoned work" in line for line in removed)
    assert any("finished work" in line for line in removed)


def test_gc_from_the_command_line_says_what_it_would_remove(
    registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_MODEL_NAME", "m")
    before = sorted(info.key for info in registry.store.list())
    assert main(["gc", "--dry-run", "--keep", "0", "--older-than", "1"]) == 0
    out = capsys.readouterr().out
    assert "would remove store: models/m/versions/20260901T020000Z-b/" in out
    assert f"{OLD}-a/" not in out and f"{OLD}-c/" not in out  # champion and its history
    after = sorted(info.key for info in registry.store.list())
    assert [key for key in after if key != "leases/m.json"] == before  # the lease gc held


def test_an_abandoned_multipart_upload_is_aborted(bucket: str) -> None:
    client = boto3.client("s3")
    client.create_multipart_upload(Bucket=bucket, Key="registry/models/m/versions/v/model.keras")
    store = S3Store(bucket, "registry")
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert store.remove_partials(later, dry_run=False) == (
        "models/m/versions/v/model.keras (multipart upload)",
    )
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_verify_names_each_problem_and_exits_1(
    registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_MODEL_NAME", "m")
    assert main(["verify", "--all"]) == 0
    assert "no problem" in capsys.readouterr().out

    registry.store.put(registry.keys.version_file(f"{OLD}-c", "model.keras"), b"bit rot")
    assert main(["verify"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{OLD}-c/model.keras: sha256 differs from the manifest's"
    ]
    assert main(["verify", "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["problems"] == [f"{OLD}-c/model.keras: sha256 differs from the manifest's"]
    assert (answer["model_name"], answer["champion_version"]) == ("m", f"{OLD}-c")
    registry.store.put(registry.keys.champion, b"{")
    assert main(["verify"]) == 1
    assert "champion.json is unreadable" in capsys.readouterr().out
    assert main(["promote", f"{OLD}-e", "--reason", "x"]) == 1
    assert main(["promote", f"{OLD}-e", "--reason", "pointer lost", "--repair"]) == 0
    assert main(["verify"]) == 0


def test_checkpoints_of_a_forced_rerun_of_finished_work_are_kept_for_its_resume(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    # "f" * 64 finished 3 days ago; a forced rerun of it was killed after an epoch, just now.
    registry.store.put(f"checkpoints/m/{'f' * 32}/epoch-1/model.weights.h5", b"weights")

    collect_garbage(registry, LocalCache(tmp_path / "c"), 2, timedelta(days=30), False, now=NOW)

    assert registry.store.exists(f"checkpoints/m/{'f' * 32}/epoch-1/model.weights.h5")
