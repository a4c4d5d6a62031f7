"""Validate: every image must decode, with the decoder training uses, before any training time.

Files that are empty, too large, corrupt, not images or outside a class folder are quarantined
(kept out of training and listed with the reason); too many of them, or too few classes or images,
stop the run. A file passes only if TensorFlow's own decoder (the one `input_fn` uses) decodes it:
Pillow reads more than TensorFlow does (1-bit and run-length-encoded BMPs, PNGs with bad checksums).
Verdicts are kept per object ETag and per set of rules, so a changed rule re-checks every file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from retrainer import Log
from retrainer.dataset import decode_problem
from retrainer.errors import DataError
from retrainer.fetching import read_manifest
from retrainer.records import INDEX, DataSnapshot, IndexEntry, QuarantinedFile, ValidatedData
from retrainer.settings import TrainingConfig
from retrainer.storage import write_atomically

# The formats tf.io.decode_image reads.
ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
# Raise when the checks themselves change: every cached verdict is then made again.
RULES_VERSION = 2

logger = logging.getLogger(__name__)


class ValidationRules(BaseModel):
    """What a file must satisfy to train; the limits are settings."""

    max_image_bytes: int
    max_image_pixels: int
    version: int = RULES_VERSION

    @classmethod
    def of(cls, config: TrainingConfig) -> ValidationRules:
        return cls(max_image_bytes=config.max_image_bytes, max_image_pixels=config.max_image_pixels)

    def key(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def image_problem(path: Path, rules: ValidationRules) -> str | None:
    """Why this file cannot be a training image, or None when it can."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if size > rules.max_image_bytes:
        return f"{size:,} bytes, more than RETRAINER_MAX_IMAGE_BYTES ({rules.max_image_bytes:,})"
    try:
        # Opening reads the header only: format and declared size, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image_format, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:
        return f"declares too many pixels to decode safely ({error})"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"does not decode: {error}"
    if image_format not in ACCEPTED_FORMATS:
        return f"format {image_format} is not one of JPEG, PNG, GIF, BMP"
    if width * height > rules.max_image_pixels:
        return (
            f"declares {width}x{height} pixels, more than RETRAINER_MAX_IMAGE_PIXELS "
            f"({rules.max_image_pixels:,})"
        )
    return decode_problem(path.read_bytes())


def compare_class_sets(
    class_names: list[str], champion_classes: list[str] | None, policy: str
) -> str | None:
    """None if the classes match the champion's; else what changed, or DataError if policy=fail."""
    if champion_classes is None or class_names == champion_classes:
        return None
    added = sorted(set(class_names) - set(champion_classes))
    missing = sorted(set(champion_classes) - set(class_names))
    change = (
        f"the classes differ from the champion's: new {added or 'none'}, "
        f"missing {missing or 'none'}"
    )
    if policy == "fail":
        raise DataError(
            f"{change}; fix the data, or set RETRAINER_ON_CLASS_CHANGE=retrain to train a new model"
        )
    return change


def validate_data(
    snapshot: DataSnapshot,
    work_dir: Path,
    min_images_per_class: int,
    max_quarantined_fraction: float,
    champion_classes: list[str] | None = None,
    on_class_change: str = "fail",
    log: Log = logger,
    rules: ValidationRules | None = None,
) -> ValidatedData:
    """Check every cached file, write the index of usable images, summarise per class.

    Verdicts are kept per object ETag, so a night with a few new images decodes only those.
    """
    rules = rules or ValidationRules.of(TrainingConfig())
    objects = read_manifest(snapshot.cache_dir)
    verdicts_path = work_dir / f"verdicts-{snapshot.cache_dir.name}-{rules.key()}.json"
    try:
        known: dict[str, list[object]] = json.loads(verdicts_path.read_text())
    except FileNotFoundError:
        known = {}
    verdicts: dict[str, list[object]] = {}
    for relative, (etag, _size) in sorted(objects.items()):
        if known.get(relative, [None])[0] == etag:
            verdicts[relative] = known[relative]
        elif "/" not in relative:
            verdicts[relative] = [etag, "not inside a class folder"]
        else:
            verdicts[relative] = [etag, image_problem(snapshot.cache_dir / relative, rules)]
    write_atomically(verdicts_path, json.dumps(verdicts).encode())
    checked = sum(1 for relative in verdicts if known.get(relative) != verdicts[relative])
    log.info(
        "Decoded %d new or changed files; %d verdicts reused", checked, len(verdicts) - checked
    )

    usable: list[tuple[str, str]] = []
    quarantined: list[QuarantinedFile] = []
    for relative, (_etag, problem) in verdicts.items():
        if problem:
            quarantined.append(QuarantinedFile(path=relative, reason=str(problem)))
        else:
            usable.append((relative, relative.split("/", 1)[0]))

    for item in quarantined:
        log.warning("Quarantined %s: %s", item.path, item.reason)
    if verdicts and len(quarantined) / len(verdicts) > max_quarantined_fraction:
        raise DataError(
            f"{len(quarantined)} of {len(verdicts)} files are unusable, more than the allowed "
            f"{max_quarantined_fraction:.0%}: fix the data or raise "
            "RETRAINER_MAX_QUARANTINED_FRACTION"
        )

    counts = Counter(class_name for _, class_name in usable)
    class_names = sorted(counts)
    if len(class_names) < 2:
        raise DataError(
            f"found {len(class_names)} class folder(s) in {snapshot.source_url}: "
            "a classifier needs at least two, one sub-folder of images per class"
        )
    too_small = {name: count for name, count in counts.items() if count < min_images_per_class}
    if too_small:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(too_small.items()))
        raise DataError(
            f"classes with fewer than {min_images_per_class} images: {listed}; add images or "
            "lower RETRAINER_MIN_IMAGES_PER_CLASS"
        )

    class_change = compare_class_sets(class_names, champion_classes, on_class_change)
    if class_change:
        log.warning("%s: training a new model", class_change.capitalize())

    label_of = {name: index for index, name in enumerate(class_names)}
    index = [IndexEntry(path=relative, label=label_of[name]) for relative, name in usable]
    index_path = work_dir / f"index-{snapshot.fingerprint[:16]}-{rules.key()}.json"
    write_atomically(index_path, INDEX.dump_json(index))

    summary = ", ".join(f"{name}: {counts[name]}" for name in class_names)
    log.info(
        "Validated %d images in %d classes (%s); %d quarantined",
        len(usable),
        len(class_names),
        summary,
        len(quarantined),
    )
    return ValidatedData(
        snapshot=snapshot,
        class_names=class_names,
        images_per_class={name: counts[name] for name in class_names},
        index_path=index_path,
        quarantined=quarantined,
        class_change=class_change,
        decoded=checked,
    )
