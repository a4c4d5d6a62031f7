"""The records the stages hand each other, with plausible values: a test states only what it is
about (`data_split(class_names=["a", "b", "c"])`) and takes the rest from here."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrainer.records import (
    ChampionRecord,
    DataSnapshot,
    DataSplit,
    PreparationSpec,
    PreparedData,
    TrainedModel,
    ValidatedData,
)

CLASSES = ["cat", "dog"]
RUN = Path("/cache/runs/run-1")


def spec(**changes: Any) -> PreparationSpec:
    base = PreparationSpec(image_size=16, max_image_bytes=10**6, max_image_pixels=10**6)
    return base.model_copy(update=changes)


def snapshot(**changes: Any) -> DataSnapshot:
    base = DataSnapshot(
        source_url="s3://data/pets",
        fingerprint="f" * 64,
        file_count=203,
        listing_path=RUN / "listing.json",
    )
    return base.model_copy(update=changes)


def prepared_data(**changes: Any) -> PreparedData:
    base = PreparedData(
        snapshot=snapshot(),
        prepared_url="s3://models/prepared/abc/def",
        spec=spec(),
        index_path=RUN / "prepared-index.json",
        prepared=3,
        reused=200,
        shards_written=1,
    )
    return base.model_copy(update=changes)


def validated_data(**changes: Any) -> ValidatedData:
    base = ValidatedData(
        prepared=prepared_data(),
        class_names=CLASSES,
        images_per_class=dict.fromkeys(CLASSES, 100),
        usable_path=RUN / "usable-images.json",
    )
    return base.model_copy(update=changes)


def data_split(**changes: Any) -> DataSplit:
    classes = changes.get("class_names", CLASSES)
    base = DataSplit(
        split_path=RUN / "split.json",
        class_names=classes,
        preprocessing=spec(),
        batch_size=8,
        train_count=65 * len(classes),
        validation_count=15 * len(classes),
        test_count=20 * len(classes),
        validation_fraction=0.15,
        test_fraction=0.2,
        train_per_class=dict.fromkeys(classes, 65),
        validation_per_class=dict.fromkeys(classes, 15),
        test_per_class=dict.fromkeys(classes, 20),
        data_fingerprint="f" * 64,
    )
    return base.model_copy(update=changes)


def trained_model(**changes: Any) -> TrainedModel:
    now = datetime.now(UTC)
    base = TrainedModel(
        model_path=RUN / "model.keras",
        history_path=RUN / "history.json",
        tensorboard_dir=RUN / "tensorboard",
        device="No GPU found: training on the CPU (float32)",
        started_from="a fresh model",
        epochs_run=10,
        kept_epoch=8,
        still_improving=False,
        images_per_second=850.0,
        started_at=now,
        finished_at=now,
    )
    return base.model_copy(update=changes)


def champion_record(**changes: Any) -> ChampionRecord:
    base = ChampionRecord(
        version="v1",
        etag="e",
        class_names=CLASSES,
        work_key="k" * 64,
        model_key="models/m/versions/v1/model.keras",
        model_sha256="0" * 64,
    )
    return base.model_copy(update=changes)
