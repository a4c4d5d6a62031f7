"""The champion contract: one check decides whether the champion can start training and judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrainer.champion import champion_mismatch, find_warm_start
from retrainer.errors import SettingsError
from retrainer.models import build_default_model
from retrainer.records import ChampionRecord
from retrainer.registry import ModelRegistry
from retrainer.storage import LocalStore
from tests import records

SPLIT = records.data_split(class_names=["a", "b"])  # of 16 px images


def champion_of(classes: list[str]) -> ChampionRecord:
    return records.champion_record(class_names=classes)


def test_a_champion_fits_with_the_same_classes_input_and_layers() -> None:
    champion = champion_of(["a", "b"])
    model = build_default_model((16, 16, 3), 2)
    assert champion_mismatch(champion, SPLIT) is None
    assert champion_mismatch(champion, SPLIT, model, build_default_model((16, 16, 3), 2)) is None


def test_other_classes_input_or_layers_are_named_as_the_reason() -> None:
    assert champion_mismatch(champion_of(["cat", "dog"]), SPLIT) == (
        "champion v1 was trained on classes ['cat', 'dog'], not ['a', 'b']"
    )
    champion = champion_of(["a", "b"])
    other_size = build_default_model((32, 32, 3), 2)
    assert champion_mismatch(champion, SPLIT, other_size) == (
        "champion v1 takes inputs (32, 32, 3), not (16, 16, 3)"
    )
    trained = build_default_model((16, 16, 3), 2)
    bigger = build_default_model((16, 16, 3), 3)
    reason = champion_mismatch(champion, SPLIT, trained, bigger)
    assert reason is not None and "layers differ from those of the model this run builds" in reason


def test_warm_start_always_fails_when_there_is_nothing_to_start_from(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path), "m")
    with pytest.raises(SettingsError, match="RETRAINER_WARM_START=always, but there is no champ"):
        find_warm_start(registry, None, SPLIT, "always", tmp_path / "models")
    other_classes = champion_of(["cat", "dog"])
    with pytest.raises(SettingsError, match="champion v1 was trained on classes"):
        find_warm_start(registry, other_classes, SPLIT, "always", tmp_path / "models")
    fresh = find_warm_start(registry, other_classes, SPLIT, "auto", tmp_path / "m")
    assert fresh.model is None
    assert fresh.description.startswith("a fresh model (champion v1 was trained on classes")
    assert not (tmp_path / "m").exists(), "a champion of other classes was downloaded"
