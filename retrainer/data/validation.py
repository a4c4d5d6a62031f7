"""Validate: the verdicts of the prepare stage, turned into the decision to train or stop.

A file is unusable when it is empty, too large, not an image, outside a class folder, or when
TensorFlow's own decoder (the one every image is read with) fails on it (`retrainer.data.image`).
Unusable files are quarantined (kept out of training and listed with the reason); too many of them,
or too few classes or images, stop the run.
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from retrainer.data.duplicates import find_copies
from retrainer.errors import DataError
from retrainer.records import (
    USABLE,
    LabelConflict,
    PreparedData,
    PreparedObject,
    QuarantinedFile,
    UsableImage,
    ValidatedData,
)
from retrainer.storage import write_atomically

logger = logging.getLogger(__name__)


def class_change_of(class_names: list[str], champion_classes: list[str] | None) -> str | None:
    """None if the classes match the champion's (or there is none); else what changed."""
    if champion_classes is None or class_names == champion_classes:
        return None
    added = sorted(set(class_names) - set(champion_classes))
    missing = sorted(set(champion_classes) - set(class_names))
    return (
        f"the classes differ from the champion's: new {added or 'none'}, "
        f"missing {missing or 'none'}"
    )


def class_of(key: str) -> str:
    return key.split("/", 1)[0]


def data_problems(
    counts: Counter[str],
    quarantined: int,
    checked: int,
    source_url: str,
    class_change: str | None,
    known_classes: set[str],
    min_images_per_class: int,
    max_quarantined_fraction: float,
) -> list[str]:
    """What stops these images from training, each with what to fix; empty when they can."""
    problems = []
    if checked and quarantined / checked > max_quarantined_fraction:
        problems.append(
            f"{quarantined} of {checked} files are unusable, more than the allowed "
            f"{max_quarantined_fraction:.0%}: fix the data or raise "
            "RETRAINER_MAX_QUARANTINED_FRACTION"
        )
    if len(counts) < 2:
        problems.append(
            f"found {len(counts)} class folder(s) in {source_url}: a classifier needs at least "
            "two, one sub-folder of images per class"
        )
    too_small = {name: count for name, count in counts.items() if count < min_images_per_class}
    if too_small:
        listed = ", ".join(
            f"{name} ({count}{', a new class' if name not in known_classes else ''})"
            for name, count in sorted(too_small.items())
        )
        problems.append(
            f"classes with fewer than {min_images_per_class} images: {listed}; add images or "
            "lower RETRAINER_MIN_IMAGES_PER_CLASS"
        )
    for names in look_alike_classes(counts):
        problems.append(
            f"class folders {' and '.join(repr(name) for name in names)} differ only in case or "
            "in how their letters are encoded (Unicode NFC/NFD): they would train as different "
            "classes; move their images into one folder"
        )
    if class_change:
        problems.append(
            f"{class_change}; fix the data, or set RETRAINER_ON_CLASS_CHANGE=retrain to train a "
            "new model"
        )
    return problems


def look_alike_classes(names: Iterable[str]) -> list[list[str]]:
    """Groups of class names a person reads as one (`Cat` and `cat`; `café` typed as one letter
    or as `e` and an accent), each sorted."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[unicodedata.normalize("NFC", name).casefold()].append(name)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


def validate_data(
    prepared: PreparedData,
    usable_path: Path,
    min_images_per_class: int,
    max_quarantined_fraction: float,
    champion_classes: list[str] | None = None,
    on_class_change: str = "fail",
    on_label_conflict: str = "quarantine",
) -> ValidatedData:
    """Judge the prepared verdicts, write the list of usable images to `usable_path`, summarise
    per class."""
    index = prepared.read_index()
    usable: dict[str, PreparedObject] = {}
    quarantined: list[QuarantinedFile] = []
    for key, entry in sorted(index.objects.items()):
        if entry.problem or entry.shard is None:
            quarantined.append(QuarantinedFile(path=key, reason=entry.problem or "no pixels"))
        else:
            usable[key] = entry
    keys = list(usable)
    entries = list(usable.values())
    copies = [
        [keys[index] for index in group]
        for group in find_copies(
            [entry.exact for entry in entries], [entry.perceptual for entry in entries]
        )
    ]
    if copies:
        logger.info(
            "Copies: %d group(s) of images that are the same photograph (%d images)",
            len(copies),
            sum(map(len, copies)),
        )
    label_conflicts = [
        LabelConflict(
            keys=group,
            classes=sorted({class_of(key) for key in group}),
            quarantined=on_label_conflict == "quarantine",
        )
        for group in copies
        if len({class_of(key) for key in group}) > 1
    ]
    for conflict in label_conflicts:
        logger.warning(
            "Label conflict: one photograph is filed under %s (%s): %s",
            " and ".join(conflict.classes),
            ", ".join(conflict.keys),
            "quarantined (RETRAINER_ON_LABEL_CONFLICT=train trains each as labelled)"
            if conflict.quarantined
            else "each trains as labelled",
        )
        if conflict.quarantined:
            for key in conflict.keys:
                others = ", ".join(other for other in conflict.keys if other != key)
                reason = f"the same photograph as {others}, under another class"
                quarantined.append(QuarantinedFile(path=key, reason=reason))
                del usable[key]

    for item in quarantined:
        logger.warning("Quarantined %s: %s", item.path, item.reason)
    counts = Counter(class_of(key) for key in usable)
    class_names = sorted(counts)
    class_change = class_change_of(class_names, champion_classes)
    if problems := data_problems(
        counts,
        len(quarantined),
        len(index.objects),
        prepared.snapshot.source_url,
        class_change if on_class_change == "fail" else None,
        set(champion_classes or class_names),
        min_images_per_class,
        max_quarantined_fraction,
    ):
        # Every problem at once: fixing one must not reveal the next a night later.
        raise DataError("; ".join(problems))
    if class_change:
        logger.warning("%s: training a new model", class_change.capitalize())

    label_of = {name: index for index, name in enumerate(class_names)}
    group_of = {key: number for number, group in enumerate(copies) for key in group}
    images = [
        UsableImage(
            key=key,
            etag=entry.etag,
            shard=str(entry.shard),
            label=label_of[class_of(key)],
            first_seen=entry.first_seen,
            copies=group_of.get(key),
        )
        for key, entry in usable.items()
    ]
    write_atomically(usable_path, USABLE.dump_json(images))

    summary = ", ".join(f"{name}: {counts[name]}" for name in class_names)
    logger.info(
        "Validated %d images in %d classes (%s); %d quarantined",
        len(usable),
        len(class_names),
        summary,
        len(quarantined),
    )
    return ValidatedData(
        prepared=prepared,
        class_names=class_names,
        images_per_class={name: counts[name] for name in class_names},
        usable_path=usable_path,
        quarantined=quarantined,
        label_conflicts=label_conflicts,
        class_change=class_change,
    )
