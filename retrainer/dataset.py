"""Batches: three stable splits and the one tf.data input function for every dataset.

Each image is placed by a hash of its key into training, validation (early stopping, checkpoint
choice) or test (the gate only). As the dataset grows an image never changes split, so no version
ever trained on, or was selected on, a test image, and comparisons night after night stay honest.

The test split is the lowest `test_fraction` of the hash range: where round 1 kept its validation
images (the lowest 20%). A store upgraded from two splits therefore gates on images no earlier
version trained on (their old validation images, which early stopping did see: that favours the
old champion on the first night, so the gate errs towards keeping it).

Images are read from the prepared shards (TFRecord files of decoded, resized uint8 pixels, see
`retrainer.preparation`); a shard may also hold records that left the data or belong to another
subset, so every record is looked up by key and ETag and kept only when it is this subset's.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from retrainer.errors import DataError
from retrainer.records import Batches, PreparationSpec, ValidatedData
from retrainer.storage import write_atomically

if TYPE_CHECKING:
    import tensorflow as tf

CHANNELS = 3
SHUFFLE_BUFFER_BYTES = 32 * 1024 * 1024

Subset = Literal["train", "validation", "test"]


class Example(BaseModel):
    key: str
    etag: str
    label: int


class Split(BaseModel):
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
    work_dir: Path,
    batch_size: int,
    validation_fraction: float,
    test_fraction: float,
) -> Batches:
    """Write the split to disk and describe it; the datasets are built where they are used."""
    subsets: dict[Subset, list[Example]] = {"train": [], "validation": [], "test": []}
    for image in data.read_usable():
        chosen = subset_of(image.key, validation_fraction, test_fraction)
        subsets[chosen].append(Example(key=image.key, etag=image.etag, label=image.label))
    split = Split(
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

    fingerprint = data.prepared.snapshot.fingerprint
    shape = f"{fingerprint}|{data.prepared.spec.key()}|{validation_fraction}|{test_fraction}"
    split_path = work_dir / f"split-{hashlib.sha256(shape.encode()).hexdigest()[:16]}.json"
    write_atomically(split_path, split.model_dump_json().encode())
    return Batches(
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
        data_fingerprint=fingerprint,
    )


def count_per_class(examples: list[Example], class_names: list[str]) -> dict[str, int]:
    counts = Counter(example.label for example in examples)
    return {name: counts[index] for index, name in enumerate(class_names)}


def read_split(batches: Batches) -> Split:
    return Split.model_validate_json(batches.split_path.read_text())


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes to uint8 RGB: how every image is read, for training and validation."""
    import tensorflow as tf

    return tf.io.decode_image(contents, channels=CHANNELS, expand_animations=False)


def within_limits(contents: tf.Tensor, spec: PreparationSpec) -> tf.Tensor:
    """The encoded bytes, once their length and the pixels their header declares are within the
    limits every training image passed; InvalidArgumentError ("refused: ...") otherwise.

    The serving signature's guard: a few hundred bytes can declare 20000x20000 pixels, which
    the decoder would allocate (1.2 GB) before finding out the rest is missing.
    """
    import tensorflow as tf

    length = tf.cast(tf.strings.length(contents), tf.int64)
    too_long = tf.debugging.assert_less_equal(
        length,
        tf.constant(spec.max_image_bytes, tf.int64),
        message=f"refused: more than {spec.max_image_bytes:,} bytes (RETRAINER_MAX_IMAGE_BYTES)",
    )
    width, height = declared_size(contents)
    too_large = tf.debugging.assert_less_equal(
        width * height,
        tf.constant(spec.max_image_pixels, tf.int64),
        message=f"refused: declares more than {spec.max_image_pixels:,} pixels "
        "(RETRAINER_MAX_IMAGE_PIXELS)",
    )
    with tf.control_dependencies([too_long, too_large]):
        return tf.identity(contents)


def declared_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Width and height (int64) as the header of a PNG, GIF, BMP or JPEG file declares them,
    read without decoding a pixel; (0, 0) for anything else (the decoder refuses it)."""
    import tensorflow as tf

    header = tf.strings.join([tf.strings.substr(contents, 0, 32), tf.constant(b"\0" * 32)])

    def number(offset: int, width: int, big_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(header, offset, width), tf.uint8)
        digits = tf.cast(raw if big_endian else tf.reverse(raw, [0]), tf.int64)
        return tf.reduce_sum(digits * (256 ** tf.range(width - 1, -1, -1, dtype=tf.int64)))

    def signed32(value: tf.Tensor) -> tf.Tensor:  # BMP heights are negative for top-down rows
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    def jpeg() -> tuple[tf.Tensor, tf.Tensor]:
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return shape[1], shape[0]

    return tf.case(
        [
            (
                tf.equal(tf.strings.substr(header, 0, 8), b"\x89PNG\r\n\x1a\n"),
                lambda: (number(16, 4, True), number(20, 4, True)),
            ),
            (
                tf.equal(tf.strings.substr(header, 0, 4), b"GIF8"),
                lambda: (number(6, 2, False), number(8, 2, False)),
            ),
            (
                tf.equal(tf.strings.substr(header, 0, 2), b"BM"),
                lambda: (signed32(number(18, 4, False)), signed32(number(22, 4, False))),
            ),
            (tf.equal(tf.strings.substr(header, 0, 3), b"\xff\xd8\xff"), jpeg),
        ],
        default=lambda: (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
    )


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
    """A decoded image to `size` x `size` uint8 pixels (bilinear, rounded)."""
    import tensorflow as tf

    return tf.cast(tf.round(tf.image.resize(image, (size, size), method="bilinear")), tf.uint8)


def decode_failure(error: tf.errors.OpError) -> str:
    """TensorFlow's decode error in one line: why a file cannot train (or be served)."""
    # Eager: "{{function_node ...}} Invalid PNG data, size 852 [Op:DecodeImage] name: ".
    # In a graph (the SavedModel) the reason follows "Graph execution error:" and the node.
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines()]
    reason = next((line for line in lines if line and not line.startswith(noise)), lines[0])
    message = re.sub(r"^\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", reason)
    # A limit of `within_limits`: "assertion failed: [refused: ...] [Condition x <= y ...".
    if refused := re.search(r"\[(refused: [^\]]*)\]", message):
        return refused.group(1)
    return f"does not decode: {message}"


# A shard record: the source object's key and ETag, and its prepared pixels (uint8, row-major).
RECORD_FEATURES = ("key", "etag", "image")


def encode_record(key: str, etag: str, pixels: bytes) -> bytes:
    import tensorflow as tf

    feature = {
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        for name, value in zip(RECORD_FEATURES, (key.encode(), etag.encode(), pixels), strict=True)
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_records(records: tf.Tensor) -> dict[str, tf.Tensor]:
    """A batch of serialized records to their key, ETag and raw pixel bytes."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in RECORD_FEATURES}
    return tf.io.parse_example(records, spec)


def record_id(key: tf.Tensor, etag: tf.Tensor) -> tf.Tensor:
    """What a record is looked up by: its object's key and ETag."""
    import tensorflow as tf

    return tf.strings.join([key, etag], separator="\n")


def input_fn(batches: Batches, subset: Subset, shuffle: bool, seed: int = 0) -> tf.data.Dataset:
    """Prepared uint8 images of one subset with integer labels, batched and prefetched.

    Images stay uint8 until the model's own Rescaling layer: 4x smaller than float32 on disk and
    in every batch. The shards already hold decoded pixels, so every epoch streams them again:
    each record is parsed and looked up in a table of this subset's images (records of other
    subsets, or of objects that left the data, are dropped). No cache of the subset: with a file
    cache, peak memory grew 30% at 10x the data, against 7% streaming the shards (bench.memory).
    Memory
    stays flat however large the dataset grows: the shuffle buffer is bounded in bytes. Without
    shuffle the order is the split's shard order, the same on every pass (the gate pairs
    predictions with labels across passes).
    """
    import tensorflow as tf

    split = read_split(batches)
    examples = split.subset(subset)
    size = batches.image_size
    ids = record_id([example.key for example in examples], [example.etag for example in examples])
    labels = [example.label for example in examples]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.constant(labels, tf.int32)), default_value=-1
    )

    def decode(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = parse_records(tf.expand_dims(record, 0))
        image = tf.reshape(tf.io.decode_raw(parsed["image"][0], tf.uint8), (size, size, CHANNELS))
        return image, table.lookup(record_id(parsed["key"][0], parsed["etag"][0]))

    def in_subset(image: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
        return label >= 0  # the table's default: another subset's record, or a dead one

    files = tf.data.Dataset.from_tensor_slices(split.shards)
    if shuffle:
        files = files.shuffle(len(split.shards), seed=seed, reshuffle_each_iteration=True)
    dataset = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(split.shards)) if shuffle else 1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # One record at a time: images sliced out of a parsed block could each keep the whole block
    # alive in the shuffle buffer.
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

    # Every image of the subset exactly once: a shard that lost a record fails here, loudly.
    dataset = dataset.filter(in_subset).apply(
        tf.data.experimental.assert_cardinality(len(examples))
    )
    if shuffle:
        buffer = max(1, min(len(examples), SHUFFLE_BUFFER_BYTES // (size * size * CHANNELS)))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batches.batch_size).prefetch(tf.data.AUTOTUNE)
