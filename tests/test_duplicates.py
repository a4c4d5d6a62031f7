"""Copies of one photograph: found from the prepared pixels, kept from leaking into the gate."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from sklearn.datasets import load_digits, load_sample_images

from retrainer.data.duplicates import find_copies
from retrainer.data.listing import list_data
from retrainer.data.local import prepare_here, split_here
from retrainer.data.splits import read_split, subset_of
from retrainer.data.validation import validate_data
from retrainer.evaluation import evaluate
from retrainer.layout import RunFolder
from retrainer.models import build_default_model
from retrainer.records import PreparationSpec, PreparedIndex
from retrainer.registry import ModelRegistry
from retrainer.settings import GateSettings, TrainingConfig
from retrainer.storage import LocalStore
from tests.conftest import digit_images, write_files

CONFIG = TrainingConfig(image_size=32)
SPEC = PreparationSpec.of(CONFIG)


def encoded(image: Image.Image, image_format: str = "PNG", **options: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


# The ways one photograph reaches a dataset twice.
COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "renamed": lambda image: encoded(image),
    "re-encoded": lambda image: encoded(image.convert("RGB"), "JPEG", quality=70),
    "resized": lambda image: encoded(image.resize((image.width * 3 // 4, image.height * 3 // 4))),
    "brightened": lambda image: encoded(
        Image.fromarray(np.clip(np.asarray(image, dtype=int) + 30, 0, 255).astype(np.uint8))
    ),
    "contrast": lambda image: encoded(ImageEnhance.Contrast(image).enhance(1.3)),
}


def prepared_index(folder: Path, tmp_path: Path) -> PreparedIndex:
    """The data in `folder`, prepared as a night prepares it: fingerprints in the index."""
    run = RunFolder(tmp_path / f"run-{uuid.uuid4().hex[:8]}")
    snapshot = list_data(LocalStore(folder), run.listing)
    prepared = prepare_here(snapshot, str(tmp_path / "store"), SPEC, run.prepared_index)
    return prepared.read_index()


def copies_by_key(index: PreparedIndex) -> list[set[str]]:
    keys = list(index.objects)
    entries = list(index.objects.values())
    groups = find_copies([e.exact for e in entries], [e.perceptual for e in entries])
    return [{keys[i] for i in group} for group in groups]


def originals() -> dict[str, Image.Image]:
    """Six handwritten digits and two photographs (bundled with scikit-learn: no download)."""
    digits = load_digits()
    images = {
        f"{label}/original.png": Image.fromarray(
            np.round(digits.images[digits.target == label][0] * 255 / 16).astype(np.uint8), "L"
        ).resize((32, 32))
        for label in range(6)
    }
    for number, photograph in enumerate(load_sample_images().images):
        images[f"photo/original{number}.png"] = Image.fromarray(photograph).resize((160, 107))
    return images


def test_renamed_reencoded_resized_and_brightened_copies_are_found(tmp_path: Path) -> None:
    files = {}
    for key, image in originals().items():
        files[key] = encoded(image)
        for how, copy in COPIES.items():
            files[key.replace("original", how)] = copy(image)
    groups = copies_by_key(prepared_index(write_files(tmp_path / "data", files), tmp_path))

    for key in originals():
        (group,) = [group for group in groups if key in group]
        expected = {key} | {key.replace("original", how) for how in COPIES}
        assert group == expected, key  # every copy found, nothing else merged


@pytest.mark.slow
def test_different_digits_of_a_class_are_rarely_taken_for_one_photograph(tmp_path: Path) -> None:
    files = digit_images(classes=10, per_class=200)  # all 1,797 demo digits
    groups = copies_by_key(prepared_index(write_files(tmp_path / "data", files), tmp_path))

    merged = sum(map(len, groups))
    # Measured: 19 of the 1,797 digits (1.1%), in 9 groups; the README states it.
    assert merged / len(files) < 0.015, f"{merged} of {len(files)} digits merged"
    assert all(len({key.split("/")[0] for key in group}) == 1 for group in groups), groups


@pytest.mark.slow
def test_copies_across_the_split_never_reach_the_gate(tmp_path: Path) -> None:
    digits = digit_images(classes=3, per_class=60)
    folder = write_files(tmp_path / "data", digits)
    clean = split_here(str(folder), str(tmp_path / "store"), tmp_path / "night1", CONFIG)
    in_test = [key for key in digits if subset_of(key, 0.15, 0.2) == "test"]
    in_training = [key for key in digits if subset_of(key, 0.15, 0.2) == "train"]

    def name_in(subset: str, key: str) -> str:
        """A new name for a copy of `key` that the split puts in `subset`."""
        return next(
            name
            for n in range(1000)
            if subset_of(name := key.replace(".png", f"-copy{n}.jpg"), 0.15, 0.2) == subset
        )

    def jpeg_copy(key: str) -> bytes:
        return COPIES["re-encoded"](Image.open(io.BytesIO(digits[key])))

    # Night 2: copies of three test images arrive under names that fall in training.
    write_files(folder, {name_in("train", key): jpeg_copy(key) for key in in_test[:3]})
    second = split_here(str(folder), str(tmp_path / "store"), tmp_path / "night2", CONFIG)
    assert (second.held_out, second.test_left_out) == (3, 0)
    assert (second.train_count, second.test_count) == (clean.train_count, clean.test_count)

    # Night 3: copies of two images trained on since night 1 arrive under names in test.
    write_files(folder, {name_in("test", key): jpeg_copy(key) for key in in_training[:2]})
    third = split_here(str(folder), str(tmp_path / "store"), tmp_path / "night3", CONFIG)
    assert (third.held_out, third.test_left_out) == (3, 2)
    assert third.test_count == clean.test_count  # the two new test images are not scored
    assert third.test_count + third.test_left_out == clean.test_count + 2
    left_out = {aside.key for aside in read_split(third).left_out}
    assert left_out == {name_in("test", key) for key in in_training[:2]}

    build_default_model((32, 32, 3), 3).save(tmp_path / "candidate.keras")
    registry = ModelRegistry(LocalStore(tmp_path / "registry"), "m")
    evaluation = evaluate(
        tmp_path / "candidate.keras", third, registry, None, tmp_path / "m", GateSettings(), 0
    )
    assert evaluation.test_images == third.test_count
    assert evaluation.copies.startswith("2 test image(s) left out of the gate")
    assert "3 copy(ies) of test images held out of training" in evaluation.copies
    keras.backend.clear_session()


def test_one_photograph_under_two_classes_is_quarantined_or_trained_as_told(
    tmp_path: Path,
) -> None:
    digits = digit_images(classes=2, per_class=20)
    conflict = {"1/also-a-zero.png": digits["0/000.png"]}
    folder = write_files(tmp_path / "data", {**digits, **conflict})
    run = RunFolder(tmp_path / "run")
    snapshot = list_data(LocalStore(folder), run.listing)
    prepared = prepare_here(snapshot, str(tmp_path / "store"), SPEC, run.prepared_index)

    told = validate_data(prepared, run.usable_images, 5, 0.1)
    (found,) = told.label_conflicts
    assert set(found.keys) == {"0/000.png", "1/also-a-zero.png"} and found.quarantined
    reasons = {item.path: item.reason for item in told.quarantined}
    assert reasons["1/also-a-zero.png"] == "the same photograph as 0/000.png, under another class"
    assert told.images_per_class == {"0": 19, "1": 20}

    trained = validate_data(prepared, run.usable_images, 5, 0.1, on_label_conflict="train")
    assert [conflict.quarantined for conflict in trained.label_conflicts] == [False]
    assert trained.images_per_class == {"0": 20, "1": 21} and not trained.quarantined
