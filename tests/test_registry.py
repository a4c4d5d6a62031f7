"""Promotion is a compare-and-swap: concurrent runs never lose an update; rollback works."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from retrainer.cli import main
from retrainer.registry import ModelRegistry, PromotionConflict
from retrainer.storage import LocalStore, ObjectStore, S3Store


def publish_stub(registry: ModelRegistry, version: str) -> None:
    """A version whose manifest exists: what promote() requires of a fully published version."""
    registry.store.put(registry.file_key(version, "metrics.json"), b'{"val_accuracy": 0.9}')
    registry.store.put(registry.file_key(version, "manifest.json"), b"{}")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("bucket"), "registry")


def test_two_runs_that_read_the_same_champion_cannot_both_promote(store: ObjectStore) -> None:
    first, second = ModelRegistry(store, "m"), ModelRegistry(store, "m")
    for version in ("v1", "v2", "v3"):
        publish_stub(first, version)
    first.promote("v1", "run-1", "passed", None)

    _, etag_seen_by_a = first.read_champion()
    _, etag_seen_by_b = second.read_champion()
    first.promote("v2", "run-a", "passed", etag_seen_by_a)
    with pytest.raises(PromotionConflict, match="changed by another run"):
        second.promote("v3", "run-b", "passed", etag_seen_by_b)

    champion, _ = first.read_champion()
    assert champion is not None and champion.version == "v2"
    assert [entry.version for entry in champion.previous] == ["v1"]


def test_two_first_champions_cannot_both_win(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    publish_stub(registry, "v1")
    publish_stub(registry, "v2")
    registry.promote("v1", "run-a", "passed", None)
    with pytest.raises(PromotionConflict):
        registry.promote("v2", "run-b", "passed", None)


def test_racing_threads_on_the_local_store_have_exactly_one_winner(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path), "m")
    versions = [f"v{index}" for index in range(8)]
    for version in versions:
        publish_stub(registry, version)
    barrier = threading.Barrier(len(versions))
    outcomes: list[str] = []

    def race(version: str) -> None:
        barrier.wait()
        try:
            registry.promote(version, version, "passed", None)
            outcomes.append("won")
        except PromotionConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=race, args=(version,)) for version in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


def test_unpublished_version_cannot_be_promoted(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="not fully published"):
        ModelRegistry(store, "m").promote("ghost", "run", "passed", None)


def test_rollback_restores_the_previous_champion(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    for version in ("v1", "v2", "v3"):
        publish_stub(registry, version)
        _, etag = registry.read_champion()
        registry.promote(version, f"run-{version}", "passed", etag)

    champion = registry.rollback("manual", "v3 misbehaves in production")
    assert champion.version == "v2"
    assert "rollback from v3" in champion.reason
    assert [entry.version for entry in champion.previous] == ["v1"]
    assert registry.rollback("manual", "again").version == "v1"
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback("manual", "nothing left")


def test_cli_promote_override_and_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "demo")
    publish_stub(registry, "v1")
    publish_stub(registry, "v2")
    registry.promote("v1", "run-1", "passed", None)

    assert main(["promote", "v2", "--reason", "hotfix approved by Ana"]) == 0
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v2"
    assert champion.reason == "override: hotfix approved by Ana"
    assert champion.run_id.startswith("manual by ")

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "v2" in out and "CHAMPION" in out

    assert main(["rollback", "--reason", "regression"]) == 0
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v1"

    assert main(["promote", "nope", "--reason", "x"]) == 1
    assert "not fully published" in capsys.readouterr().err


def test_a_champion_model_is_downloaded_once_and_checked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    registry = ModelRegistry(store, "m")
    weights = b"model bytes" * 100
    store.put(registry.file_key("v1", "model.keras"), weights)
    manifest = {"files": {"model.keras": {"sha256": hashlib.sha256(weights).hexdigest()}}}
    store.put(registry.file_key("v1", "manifest.json"), json.dumps(manifest).encode())

    first = registry.download_model("v1", tmp_path / "models")
    store.delete(registry.file_key("v1", "model.keras"))
    assert registry.download_model("v1", tmp_path / "models") == first  # no second download
    assert first.read_bytes() == weights

    first.write_bytes(b"truncated")
    store.put(registry.file_key("v1", "model.keras"), weights)
    assert registry.download_model("v1", tmp_path / "models").read_bytes() == weights
