"""Validate: the verdicts of the prepare stage, turned into the decision to train or stop.

A file is unusable when it is empty, too large, not an image, outside a class folder, or when
TensorFlow's own decoder (the one every image is read with) fails on it: Pillow reads more than
TensorFlow does (1-bit and run-length-encoded BMPs, PNGs with bad checksums). Unusable files are
quarantined (kept out of training and listed with the reason); too many of them, or too few
classes or images, stop the run.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from retrainer import Log
from retrainer.errors import DataError
from retrainer.records import (
    USABLE,
    PreparationSpec,
    PreparedData,
    QuarantinedFile,
    UsableImage,
    ValidatedData,
)
from retrainer.storage import write_atomically

# The formats tf.io.decode_image reads.
ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}

logger = logging.getLogger(__name__)


def size_problem(size: int, spec: PreparationSpec) -> str | None:
    """Why a file of `size` bytes cannot be a training image, or None."""
    if size == 0:
        return "empty file"
    if size > spec.max_image_bytes:
        return f"{size:,} bytes, more than RETRAINER_MAX_IMAGE_BYTES ({spec.max_image_bytes:,})"
    return None


def header_problem(contents: bytes, spec: PreparationSpec) -> str | None:
    """Why these bytes cannot be a training image, judged from their size and header alone.

    Run before any pixel is decoded; the decode itself is the last check (see preparation).
    """
    if problem := size_problem(len(contents), spec):
        return problem
    try:
        # Opening reads the header only: format and declared size, before any pixel is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(contents)) as image:
                image_format, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:
        return f"declares too many pixels to decode safely ({error})"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return f"does not decode: {error}"
    if image_format not in ACCEPTED_FORMATS:
        return f"format {image_format} is not one of JPEG, PNG, GIF, BMP"
    if width * height > spec.max_image_pixels:
        return (
            f"declares {width}x{height} pixels, more than RETRAINER_MAX_IMAGE_PIXELS "
            f"({spec.max_image_pixels:,})"
        )
    return None


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
    prepared: PreparedData,
    work_dir: Path,
    min_images_per_class: int,
    max_quarantined_fraction: float,
    champion_classes: list[str] | None = None,
    on_class_change: str = "fail",
    log: Log = logger,
) -> ValidatedData:
    """Judge the prepared verdicts, write the list of usable images, summarise per class."""
    index = prepared.read_index()
    usable: list[tuple[str, str, str, str]] = []
    quarantined: list[QuarantinedFile] = []
    for key, entry in sorted(index.objects.items()):
        if entry.problem or entry.shard is None:
            quarantined.append(QuarantinedFile(path=key, reason=entry.problem or "no pixels"))
        else:
            usable.append((key, entry.etag, entry.shard, key.split("/", 1)[0]))

    for item in quarantined:
        log.warning("Quarantined %s: %s", item.path, item.reason)
    checked = len(index.objects)
    if checked and len(quarantined) / checked > max_quarantined_fraction:
        raise DataError(
            f"{len(quarantined)} of {checked} files are unusable, more than the allowed "
            f"{max_quarantined_fraction:.0%}: fix the data or raise "
            "RETRAINER_MAX_QUARANTINED_FRACTION"
        )

    counts = Counter(class_name for *_, class_name in usable)
    class_names = sorted(counts)
    if len(class_names) < 2:
        raise DataError(
            f"found {len(class_names)} class folder(s) in {prepared.snapshot.source_url}: "
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
    images = [
        UsableImage(key=key, etag=etag, shard=shard, label=label_of[name])
        for key, etag, shard, name in usable
    ]
    usable_path = work_dir / "usable-images.json"
    write_atomically(usable_path, USABLE.dump_json(images))

    summary = ", ".join(f"{name}: {counts[name]}" for name in class_names)
    log.info(
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
        class_change=class_change,
    )
