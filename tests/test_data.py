"""Data in: listing and preparation against the real loopback S3 endpoint, validation, the split.

The prepared dataset (verdicts and shards in the store) is what a cold worker starts from, so its
tests use a fresh cache folder wherever a worker's disk would be empty.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrainer.data.inputs import fits_in_memory, input_fn, input_rate
from retrainer.data.listing import list_data
from retrainer.data.local import prepare_here, split_here
from retrainer.data.preparation import CHUNK_OBJECTS, mark_reader, unmark_reader
from retrainer.data.shards import ShardCorrupt, fetch_shards, shard_key
from retrainer.data.splits import read_split, split_data, subset_of
from retrainer.data.validation import class_change_of, validate_data
from retrainer.errors import DataError
from retrainer.gc import collect_garbage
from retrainer.layout import PREPARED_INDEX, LocalCache, RunFolder, reader_key
from retrainer.records import DataSnapshot, DataSplit, PreparationSpec, PreparedData, ValidatedData
from retrainer.registry import ModelRegistry
from retrainer.settings import TrainingConfig
from retrainer.storage import LocalStore, ObjectStore, S3Store, open_store
from tests.bad_files import bad_checksum_png, decompression_bomb_png, one_bit_bmp, rle8_bmp
from tests.conftest import digit_images, put_all, write_files

SPEC = PreparationSpec.of(TrainingConfig(image_size=16))


def listing_of(store: ObjectStore, tmp_path: Path) -> DataSnapshot:
    """A fresh run folder each time: what a new night on any worker starts from."""
    return list_data(store, tmp_path / f"run-{uuid.uuid4().hex[:8]}" / "listing.json")


def prepare(store: ObjectStore, tmp_path: Path, spec: PreparationSpec = SPEC) -> PreparedData:
    snapshot = listing_of(store, tmp_path)
    index_path = RunFolder(snapshot.listing_path.parent).prepared_index
    return prepare_here(snapshot, str(tmp_path / "registry"), spec, index_path)


def split_of(data: ValidatedData, tmp_path: Path, validation: float, test: float) -> DataSplit:
    """Split `data`, reading shards from a new, empty cache folder (a cold worker)."""
    cache = tmp_path / f"cache-{uuid.uuid4().hex[:8]}"
    shards = fetch_shards(data.prepared, cache / "shards")
    return split_data(data, shards, cache / "split.json", 8, validation, test)


def test_the_listing_reads_every_page(bucket: str, tmp_path: Path) -> None:
    files = {f"class{index % 2}/{index:05d}.txt": b"x" for index in range(250)}
    put_all(bucket, "many", files)
    store = S3Store(bucket, "many")
    store.list_page_size = 100  # three pages, as 1,000 keys a page would give with 2,500 objects
    snapshot = listing_of(store, tmp_path)
    assert snapshot.file_count == 250
    assert {listed.key for listed in snapshot.read_listing()} == set(files)


def test_an_unchanged_object_is_never_prepared_again_by_any_worker(
    bucket: str, tmp_path: Path
) -> None:
    images = digit_images(classes=2, per_class=6)
    put_all(bucket, "data", images)
    store = S3Store(bucket, "data")
    first = prepare(store, tmp_path)
    assert (first.prepared, first.reused, first.shards_written) == (12, 0, 1)

    # Another worker, with nothing on its disk, finds all of it in the store.
    unchanged = prepare(store, tmp_path)
    assert (unchanged.prepared, unchanged.reused, unchanged.shards_written) == (0, 12, 0)
    assert unchanged.snapshot.fingerprint == first.snapshot.fingerprint

    put_all(bucket, "data", {"0/000.png": images["1/000.png"], "1/new.png": images["1/001.png"]})
    boto3.client("s3").delete_object(Bucket=bucket, Key="data/0/001.png")
    changed = prepare(store, tmp_path)
    assert (changed.prepared, changed.reused, changed.shards_written) == (2, 10, 1)
    index = changed.read_index()
    assert "0/001.png" not in index.objects  # deleted objects leave the index
    assert index.objects["0/000.png"].etag != first.read_index().objects["0/000.png"].etag
    assert len(index.shards) == 2 and changed.snapshot.fingerprint != first.snapshot.fingerprint


def test_keys_that_do_not_map_to_one_safe_path_are_refused_with_the_reason(
    bucket: str, tmp_path: Path
) -> None:
    long_name = "n" * 256 + ".png"
    put_all(bucket, "data", {"a/ok.png": b"ok", "../evil.png": b"x", "a/../../x.png": b"x"})
    put_all(bucket, "data", {"a\\win.png": b"x", "/abs.png": b"x", f"a/{long_name}": b"x"})
    put_all(bucket, "data", {"a//x.png": b"x", "a/./y.png": b"x", "b/": b""})  # b/: a folder

    snapshot = listing_of(S3Store(bucket, "data"), tmp_path)

    reasons = {item.key: item.reason for item in snapshot.refused}
    assert reasons == {
        "../evil.png": "has an empty, '.' or '..' component",
        "a/../../x.png": "has an empty, '.' or '..' component",
        "a\\win.png": "holds a backslash",
        "/abs.png": "is absolute",
        f"a/{long_name}": "has a name longer than 255 bytes",
        "a//x.png": "has an empty, '.' or '..' component",
        "a/./y.png": "has an empty, '.' or '..' component",
    }
    # The folder marker b/ is passed over; the rest is what gets prepared.
    assert [listed.key for listed in snapshot.read_listing()] == ["a/ok.png"]


def test_symbolic_links_out_of_a_local_data_folder_are_refused(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "data", {"a/ok.png": b"ok", "b/in.png": b"in"})
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    (folder / "a" / "passwd.png").symlink_to(tmp_path / "secret.txt")
    (folder / "a" / "alias.png").symlink_to(folder / "b" / "in.png")  # inside: fine

    prepared = prepare(LocalStore(folder), tmp_path)

    assert [(item.key, item.reason) for item in prepared.refused] == [
        ("a/passwd.png", "a symbolic link out of the folder")
    ]
    assert set(prepared.read_index().objects) == {"a/ok.png", "a/alias.png", "b/in.png"}


def test_an_object_that_vanishes_between_listing_and_preparation_is_refused_not_fatal(
    tmp_path: Path,
) -> None:
    images = digit_images(classes=2, per_class=3)
    folder = write_files(tmp_path / "data", images)
    snapshot = listing_of(LocalStore(folder), tmp_path)
    (folder / "0" / "001.png").unlink()

    index_path = RunFolder(snapshot.listing_path.parent).prepared_index
    prepared = prepare_here(snapshot, str(tmp_path / "registry"), SPEC, index_path)

    assert [item.key for item in prepared.refused] == ["0/001.png"]
    assert "disappeared between the listing and its download" in prepared.refused[0].reason
    assert "0/001.png" not in prepared.read_index().objects
    assert len(prepared.read_index().objects) == 5


@pytest.mark.parametrize("where", ["local", "s3", "s3 ignoring If-Match"])
def test_an_object_swapped_for_a_larger_one_after_the_listing_is_refused_unread(
    tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    images = digit_images(classes=2, per_class=3)
    if where == "local":
        store: ObjectStore = LocalStore(write_files(tmp_path / "data", images))
    else:
        bucket = request.getfixturevalue("bucket")
        put_all(bucket, "swapped", images)
        if where == "s3 ignoring If-Match":
            request.getfixturevalue("flaky")(lambda method, path: "ignore-conditions")
        store = S3Store(bucket, "swapped")
    snapshot = listing_of(store, tmp_path)
    store.put("0/001.png", os.urandom(8 << 20))  # 8 MB where a small PNG was listed

    index_path = RunFolder(snapshot.listing_path.parent).prepared_index
    prepared = prepare_here(snapshot, str(tmp_path / "registry"), SPEC, index_path)

    assert [item.key for item in prepared.refused] == ["0/001.png"]
    assert "changed between the listing and its download" in prepared.refused[0].reason
    assert len(prepared.read_index().objects) == 5


class ReaderMarkedWhenTheIndexIsRead(LocalStore):
    """A store where another night marks itself a reader of a dataset the moment gc reads the
    dataset's index: after gc listed the dataset, as a race would have it."""

    def get(self, key: str) -> bytes:
        if key.endswith(f"/{PREPARED_INDEX}"):
            self.put(f"{key.removesuffix(PREPARED_INDEX)}{reader_key('late-night')}", b"")
        return super().get(key)


def test_mostly_dead_shards_are_compacted_and_gc_removes_what_no_index_names_nor_run_reads(
    tmp_path: Path,
) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=40))
    first = prepare(LocalStore(folder), tmp_path)
    (old_shard,) = first.read_index().shards
    for index in range(24):  # 48 of 80 records die: the shard is mostly dead
        for label in "01":
            (folder / label / f"{index:03d}.png").unlink()

    compacted = prepare(LocalStore(folder), tmp_path)

    index = compacted.read_index()
    (new_shard,) = index.shards
    assert new_shard != old_shard and index.shards[new_shard].records == 32
    assert {entry.shard for entry in index.objects.values()} == {new_shard}
    data = validate_data(compacted, tmp_path / "usable.json", 5, 0.0)
    data_split = split_of(data, tmp_path, 0.3, 0.3)
    images = sum(
        len(labels)
        for subset in ("train", "validation", "test")
        for _, labels in input_fn(data_split, subset, shuffle=False)
    )
    assert images == 32

    # A night that read the older index marks itself just after gc listed the dataset.
    late = ModelRegistry(ReaderMarkedWhenTheIndexIsRead(tmp_path / "registry"), "m")
    kept = collect_garbage(late, LocalCache(tmp_path / "c"), 5, timedelta(0), False)
    assert not [line for line in kept if "prepared shard" in line]
    unmark_reader(compacted.prepared_url, "late-night")

    registry = ModelRegistry(LocalStore(tmp_path / "registry"), "m")
    # Another model on the same data is between reading an older index and fetching its shards.
    mark_reader(compacted.prepared_url, "model-b-night")
    kept = collect_garbage(registry, LocalCache(tmp_path / "c"), 5, timedelta(0), False)
    assert not [line for line in kept if "prepared shard" in line]
    unmark_reader(compacted.prepared_url, "model-b-night")
    removed = collect_garbage(registry, LocalCache(tmp_path / "c"), 5, timedelta(0), False)
    prefix = compacted.prepared_url.removeprefix(str(tmp_path / "registry") + "/")
    assert f"store: {prefix}/{shard_key(old_shard)} (prepared shard no index names)" in removed
    assert [info.key for info in LocalStore(tmp_path / "registry").list(f"{prefix}/shards/")] == [
        f"{prefix}/{shard_key(new_shard)}"
    ]


def test_a_damaged_shard_in_the_store_is_refused_and_a_lost_one_prepared_again(
    tmp_path: Path,
) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=8))
    prepared = prepare(LocalStore(folder), tmp_path)
    (shard,) = prepared.read_index().shards
    store = open_store(prepared.prepared_url)
    good = store.get(shard_key(shard))
    store.put(shard_key(shard), good[:-1] + bytes([good[-1] ^ 1]))

    with pytest.raises(ShardCorrupt, match=f"not {shard[:12]}: the copy is damaged"):
        fetch_shards(prepared, tmp_path / "cold" / "shards")
    assert not list((tmp_path / "cold" / "shards").iterdir())

    store.delete(shard_key(shard))
    again = prepare(LocalStore(folder), tmp_path)
    assert (again.prepared, again.reused) == (16, 0)
    assert again.read_index().shards == prepared.read_index().shards  # the same bytes, same name


def test_a_cached_shard_damaged_on_this_disk_is_downloaded_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=8))
    prepared = prepare(LocalStore(folder), tmp_path)
    shards_dir = tmp_path / "warm" / "shards"
    (path,) = fetch_shards(prepared, shards_dir).values()
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped

    with caplog.at_level(logging.WARNING, logger="retrainer"):
        fetch_shards(prepared, shards_dir)

    assert path.read_bytes() == good
    assert f"Shard {path} on this disk is damaged" in caplog.text


def test_a_new_night_prepares_only_new_objects_in_chunks_of_bounded_size(tmp_path: Path) -> None:
    assert CHUNK_OBJECTS >= 100  # a shard is a large GET, not one per image
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=5))
    prepare(LocalStore(folder), tmp_path)
    store = open_store(str(tmp_path / "registry"))
    before = {info.key for info in store.list("prepared/")}
    write_files(folder, {"1/late.png": digit_images(classes=2, per_class=6)["1/005.png"]})

    later = prepare(LocalStore(folder), tmp_path)

    assert (later.prepared, later.reused, later.shards_written) == (1, 10, 1)
    after = {info.key for info in store.list("prepared/")}
    new = sorted(after - before)
    assert len(new) == 1 and new[0].endswith(".tfrecord")  # the index was rewritten in place
    assert any(key.endswith(PREPARED_INDEX) for key in before)


def image_bytes(mode: str, image_format: str, seed: int = 0) -> bytes:
    """Noise of another seed is another photograph: no two files here are copies."""
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 10, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode=mode).save(buffer, format=image_format)
    return buffer.getvalue()


def prepared_of(folder: Path, tmp_path: Path, spec: PreparationSpec = SPEC) -> PreparedData:
    return prepare(LocalStore(folder), tmp_path, spec)


def test_formats_and_channels_are_accepted_and_decode_to_rgb(tmp_path: Path) -> None:
    kinds = {
        "a/gray{}.png": ("L", "PNG"),
        "a/rgba{}.png": ("RGBA", "PNG"),
        "a/photo{}.jpg": ("RGB", "JPEG"),
        "b/anim{}.gif": ("L", "GIF"),
        "b/bitmap{}.bmp": ("RGB", "BMP"),
        "b/gray{}.jpg": ("L", "JPEG"),
    }
    names = [(name.format(index), kind) for name, kind in kinds.items() for index in range(4)]
    files = {name: image_bytes(*kind, seed=seed) for seed, (name, kind) in enumerate(names)}
    prepared = prepared_of(write_files(tmp_path / "data", files), tmp_path)
    data = validate_data(prepared, tmp_path / "usable.json", 1, 0.0)
    assert data.quarantined == []
    assert data.images_per_class == {"a": 12, "b": 12}
    data_split = split_of(data, tmp_path, 0.3, 0.3)
    for subset in ("train", "validation", "test"):
        for images, _ in input_fn(data_split, subset, shuffle=False):
            assert images.shape[1:] == (16, 16, 3)
            assert images.dtype.name == "uint8"


def test_bad_files_are_quarantined_with_reasons(tmp_path: Path) -> None:
    good = digit_images(classes=2, per_class=30)
    png = good["0/000.png"]
    bad = {"0/empty.png": b"", "1/notes.png": b"not an image", "1/cut.png": png[: len(png) // 2]}
    bad["stray.png"] = png
    prepared = prepared_of(write_files(tmp_path / "data", {**good, **bad}), tmp_path)
    data = validate_data(prepared, tmp_path / "usable.json", 5, 0.2)
    reasons = {item.path: item.reason for item in data.quarantined}
    assert reasons["0/empty.png"] == "empty file"
    assert reasons["1/notes.png"] == "not an image"
    assert reasons["1/cut.png"].startswith("does not decode")
    assert reasons["stray.png"] == "not inside a class folder"
    assert len(data.read_usable()) == 60


def test_files_pillow_reads_but_training_cannot_are_quarantined_by_the_training_decoder(
    tmp_path: Path,
) -> None:
    good = digit_images(classes=2, per_class=30)
    bad = {
        "0/bomb.png": decompression_bomb_png(),
        "0/one-bit.bmp": one_bit_bmp(),
        "1/rle.bmp": rle8_bmp(),
        "1/bad-crc.png": bad_checksum_png(),
    }
    prepared = prepared_of(write_files(tmp_path / "data", {**good, **bad}), tmp_path)
    data = validate_data(prepared, tmp_path / "usable.json", 5, 0.2)

    reasons = {item.path: item.reason for item in data.quarantined}
    assert reasons["0/bomb.png"].startswith("declares too many pixels to decode safely")
    assert reasons["0/one-bit.bmp"].startswith("does not decode: Number of channels")
    assert reasons["1/rle.bmp"].startswith("does not decode: Input size should match")
    assert reasons["1/bad-crc.png"] == "does not decode: Invalid PNG data, size 852"
    # What passed decodes in training: one epoch over every accepted image.
    data_split = split_of(data, tmp_path, 0.15, 0.2)
    for subset in ("train", "validation", "test"):
        assert sum(len(labels) for _, labels in input_fn(data_split, subset, shuffle=False)) > 0


def test_the_limits_are_settings_and_a_changed_rule_prepares_every_file_again(
    tmp_path: Path,
) -> None:
    big = Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    files = {**digit_images(classes=2, per_class=10), "0/big.png": buffer.getvalue()}
    prepared = prepared_of(write_files(tmp_path / "data", files), tmp_path)
    assert validate_data(prepared, tmp_path / "usable.json", 5, 0.2).quarantined == []

    strict = SPEC.model_copy(update={"max_image_bytes": 10_000, "max_image_pixels": 1000})
    again = prepared_of(tmp_path / "data", tmp_path, strict)
    reasons = {
        item.path: item.reason
        for item in validate_data(again, tmp_path / "usable.json", 5, 0.2).quarantined
    }
    assert reasons["0/big.png"] == (
        "declares 40x40 pixels, more than RETRAINER_MAX_IMAGE_PIXELS (1,000)"
    )
    assert (again.prepared, again.reused) == (21, 0), "verdicts of other rules were reused"


def test_too_many_bad_files_stop_the_run(tmp_path: Path) -> None:
    files = {**digit_images(classes=2, per_class=5), **{f"0/bad{i}.png": b"" for i in range(5)}}
    prepared = prepared_of(write_files(tmp_path / "data", files), tmp_path)
    with pytest.raises(DataError, match="5 of 15 files are unusable"):
        validate_data(prepared, tmp_path / "usable.json", 1, 0.1)


def test_one_class_or_a_small_class_stops_the_run(tmp_path: Path) -> None:
    one = prepared_of(write_files(tmp_path / "one", digit_images(1, 10)), tmp_path / "x")
    with pytest.raises(DataError, match="at least two"):
        validate_data(one, tmp_path / "usable.json", 1, 0.1)
    files = {**digit_images(1, 10), "1/000.png": digit_images(2, 1)["1/000.png"]}
    small = prepared_of(write_files(tmp_path / "small", files), tmp_path / "y")
    with pytest.raises(DataError, match=r"fewer than 5 images: 1 \(1\)"):
        validate_data(small, tmp_path / "usable.json", 5, 0.1)


def test_class_folders_that_read_as_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    digits = digit_images(4, 10)
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # é as one letter, and as e + an accent
    files = {
        **{key.replace("0/", "Cat/"): data for key, data in digits.items() if key[0] == "0"},
        **{key.replace("1/", "cat/"): data for key, data in digits.items() if key[0] == "1"},
        **{
            key.replace("2/", f"{composed}/"): data for key, data in digits.items() if key[0] == "2"
        },
        **{
            key.replace("3/", f"{decomposed}/"): data
            for key, data in digits.items()
            if key[0] == "3"
        },
    }
    prepared = prepared_of(write_files(tmp_path / "data", files), tmp_path)
    with pytest.raises(DataError) as error:
        validate_data(prepared, tmp_path / "usable.json", 5, 0.1)
    message = str(error.value)
    assert "class folders 'Cat' and 'cat' differ only in case" in message
    assert f"class folders {sorted([composed, decomposed])[0]!r} and" in message


def test_class_set_change_is_described_or_none() -> None:
    change = class_change_of(["cat", "fox"], ["cat", "dog"])
    assert change is not None and "new ['fox'], missing ['dog']" in change
    assert class_change_of(["cat"], None) is None
    assert class_change_of(["cat", "dog"], ["cat", "dog"]) is None


def test_a_new_small_class_is_one_error_naming_every_problem(tmp_path: Path) -> None:
    files = {
        **digit_images(2, 10),
        **{f"2/{i}.png": digit_images(3, 2)[f"2/00{i}.png"] for i in range(2)},
    }
    prepared = prepared_of(write_files(tmp_path / "data", files), tmp_path)
    with pytest.raises(DataError) as raised:
        validate_data(prepared, tmp_path / "usable.json", 5, 0.1, champion_classes=["0", "1"])
    message = str(raised.value)
    assert "fewer than 5 images: 2 (2, a new class)" in message
    assert "new ['2'], missing none" in message and "RETRAINER_ON_CLASS_CHANGE=retrain" in message
    assert "\n" not in message
    retrained = validate_data(
        prepared, tmp_path / "usable.json", 2, 0.1, ["0", "1"], on_class_change="retrain"
    )
    assert retrained.class_change is not None and "new ['2']" in retrained.class_change


def test_an_image_never_changes_split_as_the_dataset_grows(tmp_path: Path) -> None:
    images = digit_images(classes=3, per_class=60)
    first_half = {key: data for key, data in images.items() if int(key[2:5]) < 30}
    folder = write_files(tmp_path / "data", first_half)

    def split_now() -> dict[str, set[str]]:
        data = validate_data(prepared_of(folder, tmp_path), tmp_path / "usable.json", 5, 0.1)
        split_file = read_split(split_of(data, tmp_path, 0.15, 0.2))
        return {
            name: {example.key for example in split_file.subset(name)}
            for name in ("train", "validation", "test")
        }

    before = split_now()
    write_files(folder, images)
    after = split_now()

    for name in ("train", "validation", "test"):
        assert before[name] and before[name] < after[name], name  # kept, and grown
    assert not after["test"] & (after["train"] | after["validation"])


def test_changing_the_fractions_on_unchanged_data_changes_what_input_fn_yields(
    tmp_path: Path,
) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=60))
    data = validate_data(prepared_of(folder, tmp_path), tmp_path / "usable.json", 5, 0.1)
    shards = fetch_shards(data.prepared, tmp_path / "cache")

    def training_images(validation_fraction: float) -> int:
        data_split = split_data(data, shards, tmp_path / "split.json", 8, validation_fraction, 0.2)
        return sum(len(labels) for _, labels in input_fn(data_split, "train", shuffle=False))

    few_held_out, many_held_out = training_images(0.1), training_images(0.5)
    assert many_held_out < few_held_out  # no stale split was reused


SUBSETS_IN_ANOTHER_PROCESS = """
import sys
from retrainer.data.splits import subset_of
print(",".join(subset_of(f"class/{i}.png", 0.15, 0.2) for i in range(2000)))
"""


def test_subset_membership_depends_on_the_path_alone_in_every_process() -> None:
    paths = [f"class/{index}.png" for index in range(2000)]
    here = [subset_of(path, 0.15, 0.2) for path in paths]
    # Another interpreter with another string-hash salt must place every image the same way.
    elsewhere = (
        subprocess.run(
            [sys.executable, "-c", SUBSETS_IN_ANOTHER_PROCESS],
            env={**os.environ, "PYTHONHASHSEED": "12345"},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(",")
    )
    assert here == elsewhere
    shares = {name: here.count(name) / len(paths) for name in ("train", "validation", "test")}
    assert 0.16 < shares["test"] < 0.24 and 0.11 < shares["validation"] < 0.19


def epoch_of(dataset: Any) -> list[tuple[bytes, int]]:
    """One pass: every image (as its bytes) with its label, in the order they came."""
    return [
        (image.tobytes(), int(label))
        for images, labels in dataset.as_numpy_iterator()
        for image, label in zip(images, labels, strict=True)
    ]


def test_every_image_comes_once_an_epoch_from_memory_or_streamed_in_a_new_order(
    tmp_path: Path,
) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=3, per_class=40))
    data = validate_data(prepared_of(folder, tmp_path), tmp_path / "usable.json", 5, 0.1)
    data_split = split_of(data, tmp_path, 0.15, 0.2)
    held, streamed = (
        input_fn(data_split, "train", shuffle=True, seed=1, memory_budget=budget)
        for budget in (1 << 30, 0)  # the subset held in memory; too large for it: streamed
    )
    in_order = epoch_of(input_fn(data_split, "train", shuffle=False))
    assert len(in_order) == data_split.train_count
    for dataset in (held, streamed):
        first, second = epoch_of(dataset), epoch_of(dataset)
        assert sorted(first) == sorted(second) == sorted(in_order)  # each image once an epoch
        assert first != second  # reshuffled every epoch
    assert epoch_of(input_fn(data_split, "train", shuffle=False)) == in_order  # the gate's pairs

    # What the report sets beside fit's speed: held in memory, or the shards' rate here.
    assert fits_in_memory(data_split, data_split.train_count)
    small = data_split.model_copy(update={"memory_budget": 0})
    assert not fits_in_memory(small, data_split.train_count)
    assert input_rate(data_split, "train", held=False, batches=2) > 0
    assert input_rate(data_split, "train", held=True, batches=2) > 0


def test_a_shard_that_lost_records_fails_the_input_loudly(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "data", digit_images(classes=2, per_class=20))
    data = validate_data(prepared_of(folder, tmp_path), tmp_path / "usable.json", 5, 0.1)
    data_split = split_of(data, tmp_path, 0.2, 0.2)
    (shard,) = read_split(data_split).shards["train"]
    Path(shard).write_bytes(b"")  # every record gone (its copy on disk damaged)
    for budget in (1 << 30, 0):
        with pytest.raises((ValueError, tf.errors.OpError)):
            epoch_of(input_fn(data_split, "train", shuffle=False, memory_budget=budget))


def test_a_step_with_nothing_to_do_shows_as_done_not_stuck_at_zero() -> None:
    import logging

    from retrainer.progress import Progress

    seen: list[tuple[int, int]] = []
    Progress("Downloading shards", 0, logging.getLogger("test"), lambda *done: seen.append(done))
    assert seen == [(0, 0)]


def noise_images(classes: int, per_class: int, size: int) -> dict[str, bytes]:
    """Distinct random PNGs as `<class>/<n>.png`: listed class by class, as a store lists them."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for label in range(classes):
        for index in range(per_class):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, "PNG")
            files[f"class{label}/{index:04d}.png"] = buffer.getvalue()
    return files


def class_mix(dataset: Any, window_batches: int = 10) -> tuple[float, float]:
    """Over one epoch: the mean number of distinct classes in a batch, and the mean share of the
    most common class in a run of `window_batches` consecutive batches."""
    batches = [labels for _, labels in dataset.as_numpy_iterator()][:-1]  # full batches only
    distinct = float(np.mean([len(np.unique(labels)) for labels in batches]))
    windows = [
        np.concatenate(batches[start : start + window_batches])
        for start in range(0, len(batches) - window_batches + 1, window_batches)
    ]
    largest = float(np.mean([np.bincount(labels).max() / len(labels) for labels in windows]))
    return distinct, largest


@pytest.mark.slow
def test_streamed_batches_mix_the_classes_as_batches_held_in_memory_do(tmp_path: Path) -> None:
    # 6,000 images at 96 px in 10 classes: six shards, and a training subset several times the
    # streaming shuffle buffer (as every real collection is at 224 px).
    classes = 10
    folder = write_files(tmp_path / "data", noise_images(classes, per_class=600, size=24))
    config = TrainingConfig(image_size=96, batch_size=32)
    data_split = split_here(str(folder), str(tmp_path / "store"), tmp_path / "work", config)
    held_mix, streamed_mix = (
        class_mix(input_fn(data_split, "train", shuffle=True, seed=1, memory_budget=budget))
        for budget in (1 << 30, 0)
    )
    assert streamed_mix[0] >= 0.9 * held_mix[0], (streamed_mix, held_mix)
    assert streamed_mix[1] <= 1.5 / classes, (streamed_mix, held_mix)

    # Each subset reads the shards holding its images, not every shard of the dataset.
    split_file = read_split(data_split)
    every_shard = set().union(*split_file.shards.values())
    assert len(every_shard) == 6
    assert len(split_file.shards["test"]) < len(every_shard)
