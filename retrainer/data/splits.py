"""Split: three stable subsets of the usable images, written to this run's split file.

Each image is placed by a hash of its key into training, validation (early stopping, checkpoint
choice) or test (the gate only). As the dataset grows an image never changes split, so no version
ever trained on, or was selected on, a test image, and comparisons night after night stay honest.

The test split is the lowest `test_fraction` of the hash range: where round 1 kept its validation
images (the lowest 20%). A store upgraded from two splits therefore gates on images no earlier
version trained on (their old validation images, which early stopping did see: that favours the
old champion on the first night, so the gate errs towards keeping it).

The images themselves stay in the prepared shards; `retrainer.data.inputs` reads them by subset.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from retrainer.errors import DataError
from retrainer.records import DataSplit, ValidatedData
from retrainer.storage import write_atomically

Subset = Literal["train", "validation", "test"]


class Example(BaseModel):
    key: str
    etag: str
    label: int


class SplitFile(BaseModel):
    """The split file: the local shards, and every usable image by subset with its class index."""

    class_names: list[str]
    shards: list[str] = Field(description="local paths of the shards holding these images")
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def subset(self, name: Subset) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def hash_position(relative_path: str) -> float:
    """Where a path falls in [0, 1): the same answer on every run, machine and Python process."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def subset_of(relative_path: str, validation_fraction: float, test_fraction: float) -> Subset:
    position = hash_position(relative_path)
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_data(
    data: ValidatedData,
    shard_paths: dict[str, Path],
    split_path: Path,
    batch_size: int,
    validation_fraction: float,
    test_fraction: float,
) -> DataSplit:
    """Write the split to `split_path` and describe it; the datasets are built where they are
    used."""
    subsets: dict[Subset, list[Example]] = {"train": [], "validation": [], "test": []}
    for image in data.read_usable():
        chosen = subset_of(image.key, validation_fraction, test_fraction)
        subsets[chosen].append(Example(key=image.key, etag=image.etag, label=image.label))
    split = SplitFile(
        class_names=data.class_names,
        shards=[str(path) for _, path in sorted(shard_paths.items())],
        **subsets,
    )

    if not split.train:
        raise DataError(
            "no image falls in the training split: add images or lower "
            "RETRAINER_VALIDATION_FRACTION and RETRAINER_TEST_FRACTION"
        )
    held_out: tuple[tuple[Subset, str], ...] = (("validation", "VALIDATION"), ("test", "TEST"))
    for name, setting in held_out:
        present = {example.label for example in split.subset(name)}
        missing = [data.class_names[i] for i in range(len(data.class_names)) if i not in present]
        if missing:
            raise DataError(
                f"the {name} split has no images of {', '.join(missing)}: add images of "
                f"{'it' if len(missing) == 1 else 'them'} or raise RETRAINER_{setting}_FRACTION"
            )

    write_atomically(split_path, split.model_dump_json().encode())
    return DataSplit(
        split_path=split_path,
        class_names=data.class_names,
        preprocessing=data.prepared.spec,
        batch_size=batch_size,
        train_count=len(split.train),
        validation_count=len(split.validation),
        test_count=len(split.test),
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        train_per_class=count_per_class(split.train, data.class_names),
        validation_per_class=count_per_class(split.validation, data.class_names),
        test_per_class=count_per_class(split.test, data.class_names),
        data_fingerprint=data.prepared.snapshot.fingerprint,
    )


def count_per_class(examples: list[Example], class_names: list[str]) -> dict[str, int]:
    counts = Counter(example.label for example in examples)
    return {name: counts[index] for index, name in enumerate(class_names)}


def read_split(split: DataSplit) -> SplitFile:
    return SplitFile.model_validate_json(split.split_path.read_text())
