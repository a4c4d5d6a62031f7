"""Split: three stable subsets of the usable images, written to this run's split file.

Each image is placed by a hash of its key into training, validation (early stopping, checkpoint
choice) or test (the gate only). As the dataset grows an image never changes split, so no version
ever trained on, or was selected on, a test image, and comparisons night after night stay honest.

The test split is the lowest `test_fraction` of the hash range: where round 1 kept its validation
images (the lowest 20%). A store upgraded from two splits therefore gates on images no earlier
version trained on (their old validation images, which early stopping did see: that favours the
old champion on the first night, so the gate errs towards keeping it).

Copies of one photograph under other keys (`retrainer.data.duplicates`) may fall in different
subsets; nothing moves between subsets, but a copy never lets the gate score what a model trained
on. In a group of copies with members in the test split and in the others:
- when an image of training or validation was prepared on an earlier night than every test member
  (models may have trained on it already), the test members are left out of the gate's test set,
  for candidate and champion alike;
- otherwise (the test image came first, or both on the same night) the copies in training and
  validation are held out of both: the test image stays clean as data arrives.
Both are counted and listed in the split file, the gate's decision and the report.

The images themselves stay in the prepared shards; `retrainer.data.inputs` reads them by subset.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from retrainer.data.listing import hash_position
from retrainer.errors import DataError
from retrainer.records import DataSplit, UsableImage, ValidatedData
from retrainer.storage import write_atomically

Subset = Literal["train", "validation", "test"]

logger = logging.getLogger(__name__)


class Example(BaseModel):
    key: str
    etag: str
    label: int


class SetAside(BaseModel):
    """An image of the split that neither trains nor is scored, and why."""

    key: str
    reason: str


class SplitFile(BaseModel):
    """The split file: the local shards, and every usable image by subset with its class index."""

    class_names: list[str]
    shards: dict[Subset, list[str]] = Field(
        description="local paths of the shards holding each subset's images"
    )
    train: list[Example]
    validation: list[Example]
    test: list[Example] = Field(description="the test images the gate scores: no copy trained")
    held_out: list[SetAside] = Field(
        default_factory=list, description="copies of test images, kept out of training"
    )
    left_out: list[SetAside] = Field(
        default_factory=list, description="test images left out of the gate: a copy trained"
    )

    def subset(self, name: Subset) -> list[Example]:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


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
    images = data.read_usable()
    subset = {
        image.key: subset_of(image.key, validation_fraction, test_fraction) for image in images
    }
    set_aside = copies_set_aside(images, subset)
    subsets: dict[Subset, list[Example]] = {"train": [], "validation": [], "test": []}
    holding: dict[Subset, set[str]] = {"train": set(), "validation": set(), "test": set()}
    for image in images:
        if image.key not in set_aside:
            example = Example(key=image.key, etag=image.etag, label=image.label)
            subsets[subset[image.key]].append(example)
            holding[subset[image.key]].add(str(shard_paths[image.shard]))
    split = SplitFile(
        class_names=data.class_names,
        shards={name: sorted(paths) for name, paths in holding.items()},
        held_out=[aside for key, aside in set_aside.items() if subset[key] != "test"],
        left_out=[aside for key, aside in set_aside.items() if subset[key] == "test"],
        **subsets,
    )
    if set_aside:
        logger.info(
            "Copies across the split: %d copies of test images held out of training and "
            "validation, %d test images left out of the gate (a copy trained before they came)",
            len(split.held_out),
            len(split.left_out),
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
            copies = (
                f" ({len(split.held_out)} image(s) were held out as copies of test images)"
                if split.held_out and name == "validation"
                else ""
            )
            raise DataError(
                f"the {name} split has no images of {', '.join(missing)}{copies}: add images of "
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
        held_out=len(split.held_out),
        test_left_out=len(split.left_out),
        data_fingerprint=data.prepared.snapshot.fingerprint,
    )


def copies_set_aside(images: list[UsableImage], subset: dict[str, Subset]) -> dict[str, SetAside]:
    """The images that neither train nor are scored, because a copy of them is in another
    subset: by key, with the reason (see the module's docstring for the rule)."""
    groups: dict[int, list[UsableImage]] = defaultdict(list)
    for image in images:
        if image.copies is not None:
            groups[image.copies].append(image)
    set_aside: dict[str, SetAside] = {}
    for members in groups.values():
        tested = [image for image in members if subset[image.key] == "test"]
        trained = [image for image in members if subset[image.key] != "test"]
        if not tested or not trained:
            continue
        arrived = min(first_seen(image) for image in tested)
        earlier = [image for image in trained if first_seen(image) < arrived]
        if earlier:
            reason = f"left out of the gate: {earlier[0].key} is a copy that trained before it came"
            set_aside.update(
                {image.key: SetAside(key=image.key, reason=reason) for image in tested}
            )
        else:
            reason = f"held out of training: a copy of test image {tested[0].key}"
            set_aside.update(
                {image.key: SetAside(key=image.key, reason=reason) for image in trained}
            )
    return set_aside


def first_seen(image: UsableImage) -> datetime:
    return image.first_seen or datetime.min.replace(tzinfo=UTC)


def count_per_class(examples: list[Example], class_names: list[str]) -> dict[str, int]:
    counts = Counter(example.label for example in examples)
    return {name: counts[index] for index, name in enumerate(class_names)}


def read_split(split: DataSplit) -> SplitFile:
    return SplitFile.model_validate_json(split.split_path.read_text())
