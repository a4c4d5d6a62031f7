"""The champion is scored on the candidate's images; when it cannot be, it is left out, with why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrainer.dataset import split_data
from retrainer.evaluation import evaluate
from retrainer.fetching import fetch_data
from retrainer.records import Batches
from retrainer.registry import ModelRegistry
from retrainer.storage import LocalStore
from retrainer.training import build_default_model
from retrainer.validation import validate_data
from tests.conftest import digit_images, write_files


@pytest.fixture
def batches(tmp_path: Path) -> Batches:
    folder = write_files(tmp_path / "images", digit_images(classes=2, per_class=20))
    data = validate_data(fetch_data(LocalStore(folder), tmp_path / "cache"), tmp_path / "w", 5, 0.1)
    return split_data(data, tmp_path / "w", 16, 8, 0.3, cache_decoded=False)


def publish_champion(registry: ModelRegistry, classes: list[str], model_file: bytes) -> None:
    registry.store.put(registry.file_key("v1", "model.keras"), model_file)
    manifest = json.dumps({"class_names": classes}).encode()
    registry.store.put(registry.file_key("v1", "manifest.json"), manifest)
    registry.promote("v1", "run-1", "passed", None)


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    model = build_default_model((16, 16, 3), 2)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    path = tmp_path / "candidate.keras"
    model.save(path)
    return path


def test_the_champion_is_scored_on_the_same_images(
    batches: Batches, candidate: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_champion(registry, ["0", "1"], candidate.read_bytes())
    scores, champion, note = evaluate(
        candidate, batches, registry, registry.read_champion()[0], tmp_path / "models"
    )
    assert champion == scores  # the same model on the same images scores the same
    assert note == "compared with champion v1 on the same images"


def test_a_champion_of_other_classes_is_left_out_with_the_reason(
    batches: Batches, candidate: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_champion(registry, ["cat", "dog"], candidate.read_bytes())
    _, champion, note = evaluate(
        candidate, batches, registry, registry.read_champion()[0], tmp_path / "models"
    )
    assert champion is None
    assert "was trained on classes ['cat', 'dog']" in note
    assert note.endswith("decided by the absolute thresholds alone")


def test_an_unreadable_champion_is_left_out_with_the_reason(
    batches: Batches, candidate: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_champion(registry, ["0", "1"], b"not a keras file")
    _, champion, note = evaluate(
        candidate, batches, registry, registry.read_champion()[0], tmp_path / "models"
    )
    assert champion is None
    assert "could not be loaded" in note
