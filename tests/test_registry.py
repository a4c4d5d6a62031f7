"""Promotion is a compare-and-swap: concurrent runs never lose an update; rollback works."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from retrainer.errors import RegistryCorrupt
from retrainer.registry import ModelIntegrityError, ModelRegistry, PromotionConflict
from retrainer.storage import LocalStore, ObjectStore, S3Store
from tests.conftest import publish_stub_version


def publish_stub(registry: ModelRegistry, version: str) -> None:
    """A version whose manifest exists: what promote() requires of a fully published version."""
    publish_stub_version(registry, version, {"metrics.json": b'{"val_accuracy": 0.9}'}, ["a"])


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


def test_a_champion_model_is_downloaded_once_and_checked(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    registry = ModelRegistry(store, "m")
    weights = b"model bytes" * 100
    publish_stub_version(registry, "v1", {"model.keras": weights}, ["a", "b"])
    registry.promote("v1", "run-1", "passed", None)
    champion = registry.read_champion_record()
    assert champion is not None

    first = registry.download_champion_model(champion, tmp_path / "models")
    store.delete(registry.keys.version_file("v1", "model.keras"))
    assert registry.download_champion_model(champion, tmp_path / "models") == first  # kept
    assert first.read_bytes() == weights

    first.write_bytes(b"truncated")  # a damaged local copy is fetched again
    store.put(registry.keys.version_file("v1", "model.keras"), weights)
    assert registry.download_champion_model(champion, tmp_path / "models").read_bytes() == weights

    first.unlink()
    store.put(registry.keys.version_file("v1", "model.keras"), b"tampered")
    with pytest.raises(ModelIntegrityError, match="does not match the sha256"):
        registry.download_champion_model(champion, tmp_path / "models")
    assert not first.exists()


def test_the_champion_record_carries_classes_work_key_and_model_hash(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    assert registry.read_champion_record() is None
    publish_stub_version(registry, "v1", {"model.keras": b"weights"}, ["cat", "dog"])
    registry.promote("v1", "run-1", "passed", None)

    record = registry.read_champion_record()

    assert record is not None
    assert (record.version, record.class_names, record.work_key) == (
        "v1",
        ["cat", "dog"],
        "work-of-v1",
    )
    assert record.model_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert record.etag == registry.read_champion()[1]


def publish_passed(registry: ModelRegistry, *versions: str) -> None:
    """Versions whose gate passed, each of its own work."""
    for version in versions:
        publish_stub_version(registry, version, {"model.keras": version.encode()}, ["a", "b"])
        registry.store.put(
            registry.keys.version_file(version, "decision.json"), b'{"passed": true}'
        )


def promote_in_turn(registry: ModelRegistry, *versions: str) -> None:
    for version in versions:
        registry.promote(version, f"run-{version}", "passed", registry.read_champion()[1])


def test_a_torn_champion_pointer_stops_reads_and_a_repair_continues_its_history(
    store: ObjectStore,
) -> None:
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2")
    promote_in_turn(registry, "v1")
    store.put(registry.keys.champion, b'{"version": "v1", "trunc')

    with pytest.raises(RegistryCorrupt, match=r"champion.json is unreadable.*retrainer repair"):
        registry.read_champion_record()
    with pytest.raises(RegistryCorrupt):
        registry.promote("v2", "manual", "fix", None)

    champion = registry.promote("v2", "manual", "fix", None, repair=True)
    assert champion.version == "v2"
    assert [entry.version for entry in champion.previous] == ["v1"]  # history kept, from the log
    assert registry.read_champion_record() is not None


def v3_rolled_back_to_v2(store: ObjectStore) -> ModelRegistry:
    """Three champions in turn, the last rolled back by an operator."""
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2", "v3")
    promote_in_turn(registry, "v1", "v2", "v3")
    registry.rollback("operator", "v3 misclassifies class b")
    return registry


def test_rollback_repair_of_a_torn_pointer_never_promotes_what_was_rolled_back(
    store: ObjectStore,
) -> None:
    registry = v3_rolled_back_to_v2(store)
    store.put(registry.keys.champion, b"garbage")

    repaired = registry.rollback("operator", "v2 too", repair=True)

    assert repaired.version == "v1"  # from v2, the champion the history names; never v3
    assert repaired.previous == []
    assert registry.withdrawn_versions() == {"v2", "v3"}


def test_rollback_repair_without_a_history_picks_the_newest_passed_version_not_withdrawn(
    store: ObjectStore,
) -> None:
    registry = v3_rolled_back_to_v2(store)
    for info in list(store.list(registry.keys.history)):  # a store from before the history
        store.delete(info.key)
    store.put(registry.keys.champion, b"garbage")

    repaired = registry.rollback("operator", "pointer lost", repair=True)

    assert repaired.version == "v2"
    assert "repair" in repaired.reason


def test_a_missing_champion_pointer_after_promotions_is_a_registry_problem_not_a_first_model(
    store: ObjectStore,
) -> None:
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2")
    promote_in_turn(registry, "v1", "v2")
    before = store.get(registry.keys.champion)
    store.delete(registry.keys.champion)  # by hand, or a lifecycle rule

    with pytest.raises(RegistryCorrupt, match=r"champion.json is missing.*version v2.*repair"):
        registry.read_champion_record()

    restored = registry.restore_champion()
    assert restored.version == "v2" and store.get(registry.keys.champion) == before
    with pytest.raises(ValueError, match="nothing to do"):
        registry.restore_champion()


def test_every_change_of_champion_is_appended_to_the_history(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2", "v3")
    promote_in_turn(registry, "v1", "v2")
    registry.promote(
        "v3", "operator", "override: hotfix", registry.read_champion()[1], override=True
    )
    registry.rollback("operator", "hotfix broke b")

    history = registry.read_history()

    assert [(entry.version, entry.action) for entry in history] == [
        ("v1", "promotion"),
        ("v2", "promotion"),
        ("v3", "override"),
        ("v2", "rollback"),
    ]
    assert [entry.generation for entry in history] == [1, 2, 3, 4]
    assert history[-1] == registry.read_champion()[0]


def test_rolled_back_and_demoted_work_is_withdrawn_with_the_operators_reason(
    store: ObjectStore,
) -> None:
    from retrainer.freshness import skip_if_unchanged
    from retrainer.records import Work
    from retrainer.settings import DEFAULT_MODEL_FACTORY, TrainingConfig
    from retrainer.user_code import code_identity

    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2", "v3")
    promote_in_turn(registry, "v1", "v2")
    registry.rollback("manual by ana", "misclassifies class 7")
    registry.promote(
        "v3", "manual by bo", "override: approved", registry.read_champion()[1], override=True
    )

    def night(work_key: str) -> str | None:
        work = Work(
            key=work_key,
            data_fingerprint="f",
            config=TrainingConfig(),
            code=code_identity(DEFAULT_MODEL_FACTORY, None),
            code_version="c",
        )
        skipped = skip_if_unchanged(registry, registry.read_champion_record(), work)
        return skipped.message if skipped else None

    rolled_back = night("work-of-v2")
    assert rolled_back is not None and "version v2" in rolled_back
    assert "rolled back by manual by ana: misclassifies class 7" in rolled_back
    assert "--force" in rolled_back
    demoted = night("work-of-v1")
    assert demoted is not None and "demoted by manual by bo for v3" in demoted
    assert night("new data") is None  # new work trains and is judged as usual


def test_a_version_with_missing_files_or_no_saved_model_is_never_promoted(
    store: ObjectStore,
) -> None:
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2")
    publish_stub_version(registry, "old", {"model.keras": b"k"}, ["a", "b"], serving=None)
    promote_in_turn(registry, "v1")
    store.delete(
        registry.keys.version_file("v2", "model.keras")
    )  # e.g. collected while it was published
    champion_before = store.get(registry.keys.champion)

    with pytest.raises(ValueError, match=r"v2 .* missing or has damaged files \(model.keras\)"):
        registry.promote("v2", "run-2", "passed", registry.read_champion()[1])
    with pytest.raises(ValueError, match="before versions carried a SavedModel"):
        registry.promote("old", "operator", "override", registry.read_champion()[1])
    assert store.get(registry.keys.champion) == champion_before


def test_a_version_whose_model_file_was_cut_short_is_never_promoted(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    publish_passed(registry, "v1", "v2")
    promote_in_turn(registry, "v1")
    key = registry.keys.version_file("v2", "model.keras")
    store.put(key, store.get(key)[:-1])  # an upload cut short: there, but one byte too short

    with pytest.raises(ValueError, match=r"v2 .* missing or has damaged files \(model.keras\)"):
        registry.promote("v2", "run-2", "passed", registry.read_champion()[1])
    champion, _ = registry.read_champion()
    assert champion is not None and champion.version == "v1"


def test_verify_names_each_damaged_or_missing_file(store: ObjectStore) -> None:
    registry = ModelRegistry(store, "m")
    publish_stub_version(
        registry, "v1", {"model.keras": b"weights", "history.json": b"{}"}, ["a", "b"]
    )
    assert registry.verify_version("v1") == []
    store.put(registry.keys.version_file("v1", "model.keras"), b"bit rot")
    store.delete(registry.keys.version_file("v1", "history.json"))
    assert registry.verify_version("v1") == [
        "v1/history.json: missing",
        "v1/model.keras: sha256 differs from the manifest's",
    ]
