"""Transfer learning: a Keras Applications backbone from a weights file, frozen, then fine-tuned."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from flows.retrain import retrain
from retrainer.checkpoints import CheckpointMirror
from retrainer.data.local import split_here
from retrainer.errors import SettingsError
from retrainer.models import fetch_backbone_weights, find_backbone
from retrainer.records import DataSplit, TrainedModel
from retrainer.registry import ModelRegistry
from retrainer.serving import download_serving_model, predict_files
from retrainer.settings import TrainingConfig, load_settings
from retrainer.storage import LocalStore, S3Store
from retrainer.training import train_model
from tests.conftest import digit_images, put_all, write_files

SIZE = 32  # MobileNetV3's smallest input: the fastest real backbone there is


def backbone_weights_file(folder: Path) -> Path:
    """Weights of MobileNetV3Small without its top, as a user saves them; this test's own, so
    nothing is downloaded (random, but not what the training's seed would build)."""
    keras.utils.set_random_seed(1234)
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, pooling="avg"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mobilenet_v3_small.weights.h5"
    backbone.save_weights(path)
    return path


def kernels(model: keras.Model) -> list[np.ndarray]:
    """The backbone's convolution kernels (moving statistics of BatchNorm left aside)."""
    backbone = find_backbone(model)
    assert backbone is not None
    return [w.numpy() for w in backbone.weights if "kernel" in w.path]


def file_kernels(path: Path) -> list[np.ndarray]:
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, pooling="avg"
    )
    backbone.load_weights(path)
    return [w.numpy() for w in backbone.weights if "kernel" in w.path]


@pytest.fixture
def digits_split(tmp_path: Path) -> DataSplit:
    data = write_files(tmp_path / "images", digit_images(classes=3, per_class=30))
    config = TrainingConfig(image_size=SIZE, batch_size=16)
    return split_here(str(data), str(tmp_path / "store"), tmp_path / "work", config)


def transfer_config(weights: Path, epochs: int, fine_tune_epochs: int) -> TrainingConfig:
    return TrainingConfig(
        image_size=SIZE,
        batch_size=16,
        epochs=epochs,
        fine_tune_epochs=fine_tune_epochs,
        early_stopping_patience=0,
        backbone="mobilenet_v3_small",
        backbone_weights=str(weights),
    )


def mirror_in(folder: Path) -> CheckpointMirror:
    return CheckpointMirror(LocalStore(folder / "store"), "checkpoints/t/k", folder / "ck")


@pytest.mark.slow  # trains a backbone: 14 s of the fast lane
def test_the_backbone_starts_from_its_weights_file_and_stays_frozen_in_the_first_phase(
    digits_split: DataSplit, tmp_path: Path
) -> None:
    weights = backbone_weights_file(tmp_path / "weights")
    config = transfer_config(weights, epochs=1, fine_tune_epochs=0)
    trained = train_model(
        digits_split, config, tmp_path / "out", mirror_in(tmp_path), backbone_weights=weights
    )
    model = keras.models.load_model(trained.model_path, safe_mode=True, compile=False)
    for after, before in zip(kernels(model), file_kernels(weights), strict=True):
        np.testing.assert_array_equal(after, before)
    assert not np.allclose(model.get_layer("classifier").get_weights()[0], 0.0)


class Preempted(RuntimeError):
    pass


def stopped_in(killed_in_epoch: int) -> Callable[[int, int], None]:
    """An epoch-end callback that stops the run in `killed_in_epoch`, before its checkpoint: the
    previous epoch is the last one kept, as after a kill."""

    def preempt(epoch: int, epochs: int) -> None:
        if epoch == killed_in_epoch:
            raise Preempted(f"stopped in epoch {epoch}")

    return preempt


def assert_resumed_fine_tuning(log: str, at_epoch: int) -> None:
    assert f"Resuming at epoch {at_epoch} of 4" in log
    assert "Fine-tuning from epoch 2" in log
    assert "Epoch 1/4" not in log, "the frozen phase ran again"
    assert "Skipping variable loading" not in log


# One test, three trainings: each traces the fine-tuning step of the backbone anew (20 s and more).
@pytest.mark.slow
def test_a_run_stopped_as_and_while_fine_tuning_resumes_there_and_fine_tunes_the_backbone(
    digits_split: DataSplit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = backbone_weights_file(tmp_path / "weights")
    config = transfer_config(weights, epochs=1, fine_tune_epochs=3)

    def train(on_epoch: Callable[[int, int], None] | None = None) -> TrainedModel:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="retrainer"):
            return train_model(
                digits_split,
                config,
                tmp_path / "out",
                mirror_in(tmp_path),
                backbone_weights=weights,
                on_epoch=on_epoch,
            )

    with pytest.raises(Preempted):
        train(on_epoch=stopped_in(2))  # as fine-tuning starts
    with pytest.raises(Preempted):
        train(on_epoch=stopped_in(3))  # while it runs
    assert_resumed_fine_tuning(caplog.text, at_epoch=2)
    trained = train()
    assert_resumed_fine_tuning(caplog.text, at_epoch=3)

    assert trained.resumed_from_epoch == 2
    history = json.loads(trained.history_path.read_text())
    assert len(history["loss"]) == 4
    model = keras.models.load_model(trained.model_path, safe_mode=True, compile=False)
    moved = [
        not np.allclose(after, before)
        for after, before in zip(kernels(model), file_kernels(weights), strict=True)
    ]
    assert all(moved), f"{moved.count(False)} of {len(moved)} backbone kernels did not train"


def test_a_backbone_needs_its_weights_and_a_large_enough_image() -> None:
    with pytest.raises(SettingsError, match="needs RETRAINER_BACKBONE_WEIGHTS"):
        load_settings(backbone="mobilenet_v3_small")
    with pytest.raises(SettingsError, match="at least 32 px: raise RETRAINER_IMAGE_SIZE"):
        load_settings(backbone="mobilenet_v3_small", backbone_weights="imagenet", image_size=16)
    with pytest.raises(SettingsError, match="both choose the model"):
        load_settings(
            backbone="efficientnet_v2_b0",
            backbone_weights="s3://weights-bucket/b0.weights.h5",
            model_factory="tests.user_models:tiny_cnn",
        )


def test_weights_of_another_backbone_are_refused_with_what_they_are_not(
    tmp_path: Path, digits_split: DataSplit
) -> None:
    weights = backbone_weights_file(tmp_path / "weights")
    config = transfer_config(weights, epochs=1, fine_tune_epochs=0).model_copy(
        update={"backbone": "efficientnet_v2_b0"}
    )
    with pytest.raises(SettingsError, match="are not the weights of efficientnet_v2_b0"):
        train_model(
            digits_split, config, tmp_path / "out", mirror_in(tmp_path), backbone_weights=weights
        )


def test_backbone_weights_from_the_store_are_downloaded_once_per_version(
    bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = backbone_weights_file(tmp_path / "weights")
    url = f"s3://{bucket}/pretrained/{weights.name}"
    put_all(bucket, "pretrained", {weights.name: weights.read_bytes()})
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="retrainer"):
        first = fetch_backbone_weights(url, cache)
        again = fetch_backbone_weights(url, cache)
        put_all(bucket, "pretrained", {weights.name: weights.read_bytes() + b"\0"})
        changed = fetch_backbone_weights(url, cache)
    assert first == again and first != changed
    assert isinstance(first, Path) and first.read_bytes() == weights.read_bytes()
    assert caplog.text.count("Backbone weights: downloaded") == 2
    with pytest.raises(SettingsError, match="there is no file at"):
        fetch_backbone_weights(f"s3://{bucket}/pretrained/missing.weights.h5", cache)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_backbone_model_from_store_weights_publishes_serves_and_warm_starts(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = backbone_weights_file(tmp_path / "weights")
    put_all(bucket, "pretrained", {weights.name: weights.read_bytes()})
    data = write_files(tmp_path / "images", digit_images(classes=3, per_class=30))
    for name, value in {
        "STORE_URL": f"s3://{bucket}/registry",
        "DATA_URL": str(data),
        "IMAGE_SIZE": str(SIZE),
        "BATCH_SIZE": "16",
        "EPOCHS": "1",
        "FINE_TUNE_EPOCHS": "1",
        "BACKBONE": "mobilenet_v3_small",
        "BACKBONE_WEIGHTS": f"s3://{bucket}/pretrained/{weights.name}",
        "GATE__ACCURACY__THRESHOLD": "0.0",
        "GATE__MAX_CLASS_RECALL_DROP": "1.0",
    }.items():
        monkeypatch.setenv(f"RETRAINER_{name}", value)

    first = retrain()
    assert first.promoted, first
    store = S3Store(bucket, "registry")
    manifest = json.loads(store.get(f"models/demo/versions/{first.version}/manifest.json"))
    assert manifest["parameters"]["backbone"] == "mobilenet_v3_small"
    assert store.exists(f"models/demo/versions/{first.version}/saved_model/saved_model.pb")
    image = tmp_path / "digit.png"
    image.write_bytes(digit_images(classes=1, per_class=1)["0/000.png"])
    served = download_serving_model(ModelRegistry(store, "demo"), first.version, tmp_path / "m")
    [prediction] = predict_files(served, [image])
    assert prediction.class_name in {"0", "1", "2"}

    second = retrain(force=True)
    manifest = json.loads(store.get(f"models/demo/versions/{second.version}/manifest.json"))
    assert manifest["started_from"] == f"champion {first.version}"
