"""The champion is scored on the candidate's images. Only a deterministic incompatibility leaves
it out (with the reason); a champion that cannot be fetched, checked or loaded fails closed."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from retrainer.champion import ChampionUnavailable
from retrainer.data.local import split_here
from retrainer.evaluation import evaluate, predict, score_predictions
from retrainer.models import build_default_model
from retrainer.records import DataSplit, Evaluation
from retrainer.registry import ModelRegistry
from retrainer.settings import GateSettings, TrainingConfig
from retrainer.storage import LocalStore
from tests.conftest import digit_images, publish_stub_version, write_files


@pytest.fixture
def data_split(tmp_path: Path) -> DataSplit:
    folder = write_files(tmp_path / "images", digit_images(classes=2, per_class=20))
    config = TrainingConfig(image_size=16, batch_size=8, validation_fraction=0.3, test_fraction=0.3)
    return split_here(str(folder), str(tmp_path / "prepared"), tmp_path / "w", config)


def saved_model(path: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)
    build_default_model((16, 16, 3), 2).save(path)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalStore(tmp_path / "store"), "m")


def evaluated(
    candidate: Path, data_split: DataSplit, registry: ModelRegistry, models: Path
) -> Evaluation:
    champion = registry.read_champion_record()
    return evaluate(candidate, data_split, registry, champion, models, GateSettings(), seed=0)


def champion_of(
    registry: ModelRegistry, model_file: bytes, classes: list[str] | None = None
) -> None:
    publish_stub_version(registry, "v1", {"model.keras": model_file}, classes or ["0", "1"])
    registry.promote("v1", "run-v1", "passed", None)


def test_the_champion_is_scored_on_the_same_images(
    data_split: DataSplit, registry: ModelRegistry, tmp_path: Path
) -> None:
    candidate = saved_model(tmp_path / "candidate.keras", seed=1)
    champion_file = saved_model(tmp_path / "champion.keras", seed=2)
    champion_of(registry, champion_file.read_bytes())

    evaluation = evaluated(candidate, data_split, registry, tmp_path / "models")

    # Two different models: each side's scores are that model's own, on the test images.
    model = keras.models.load_model(champion_file, compile=False)
    direct = score_predictions(*predict(model, data_split, "test"), data_split.class_names)
    assert evaluation.champion == direct
    assert not np.isclose(direct.loss, evaluation.candidate.loss)
    assert evaluation.test_images == data_split.test_count
    assert evaluation.tests["accuracy"].images == data_split.test_count
    assert evaluation.note.startswith("compared with champion v1 on the same test images")


def test_a_champion_of_other_classes_is_left_out_with_the_reason(
    data_split: DataSplit, registry: ModelRegistry, tmp_path: Path
) -> None:
    candidate = saved_model(tmp_path / "candidate.keras", seed=1)
    champion_of(registry, candidate.read_bytes(), classes=["cat", "dog"])
    evaluation = evaluated(candidate, data_split, registry, tmp_path / "models")
    assert evaluation.champion is None
    assert "was trained on classes ['cat', 'dog']" in evaluation.note
    assert evaluation.note.endswith("decided by the absolute thresholds alone")


def test_an_unloadable_champion_fails_the_gate_closed(
    data_split: DataSplit, registry: ModelRegistry, tmp_path: Path
) -> None:
    candidate = saved_model(tmp_path / "candidate.keras", seed=1)
    champion_of(registry, b"not a keras file")
    with pytest.raises(ChampionUnavailable, match="could not be loaded, so nothing is promoted"):
        evaluated(candidate, data_split, registry, tmp_path / "m")


def test_a_champion_model_that_differs_from_its_manifest_is_never_loaded(
    data_split: DataSplit, registry: ModelRegistry, tmp_path: Path
) -> None:
    candidate = saved_model(tmp_path / "candidate.keras", seed=1)
    champion_of(registry, candidate.read_bytes())
    # Another valid model file in place of the published one: loadable, but not what was gated.
    other = saved_model(tmp_path / "other.keras", seed=3)
    registry.store.upload(registry.keys.version_file("v1", "model.keras"), other)

    with pytest.raises(ChampionUnavailable, match="does not match the sha256 in its manifest"):
        evaluated(candidate, data_split, registry, tmp_path / "m")
    assert not list((tmp_path / "m").rglob("model.keras")), "a mismatching file was kept"


CLASSES = ["cat", "dog"]


def test_scores_match_accuracy_recall_precision_loss_and_f1_computed_by_hand() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    result = score_predictions(probabilities, labels, CLASSES)
    assert result.accuracy == pytest.approx(0.75)
    assert result.recall == {"cat": 1.0, "dog": pytest.approx(2 / 3)}
    assert result.precision == {"cat": 0.5, "dog": 1.0}
    assert result.confusion_matrix == [[1, 0], [1, 2]]
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert result.loss == pytest.approx(expected_loss)
    assert result.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)
