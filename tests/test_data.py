"""Data in: incremental fetch against the real loopback S3 endpoint, validation, the split."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from retrainer.dataset import input_fn, read_split, split_data, subset_of
from retrainer.errors import DataError
from retrainer.fetching import LOCK_NAME, MANIFEST_NAME, fetch_data
from retrainer.records import DataSnapshot
from retrainer.storage import LocalStore, S3Store
from retrainer.validation import ValidationRules, compare_class_sets, validate_data
from tests.bad_files import bad_checksum_png, decompression_bomb_png, one_bit_bmp, rle8_bmp
from tests.conftest import digit_images, write_files


def put_all(bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    client = boto3.client("s3")
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)


def cached_files(snapshot: DataSnapshot) -> set[str]:
    return {
        path.relative_to(snapshot.cache_dir).as_posix()
        for path in snapshot.cache_dir.rglob("*")
        if path.is_file() and path.name not in (MANIFEST_NAME, LOCK_NAME)
    }


def test_fetch_reads_every_page_of_the_listing(bucket: str, tmp_path: Path) -> None:
    files = {f"class{index % 2}/{index:05d}.txt": b"x" for index in range(250)}
    put_all(bucket, "many", files)
    store = S3Store(bucket, "many")
    store.list_page_size = 100  # three pages, as 1,000 keys a page would give with 2,500 objects
    snapshot = fetch_data(store, tmp_path / "cache")
    assert snapshot.file_count == snapshot.downloaded == 250
    assert cached_files(snapshot) == set(files)


def test_incremental_fetch_downloads_only_what_changed(bucket: str, tmp_path: Path) -> None:
    put_all(bucket, "data", {"a/1.png": b"one", "a/2.png": b"two", "b/3.png": b"three"})
    store = S3Store(bucket, "data")
    first = fetch_data(store, tmp_path)

    unchanged = fetch_data(store, tmp_path)
    assert unchanged.downloaded == 0 and unchanged.deleted == 0
    assert unchanged.fingerprint == first.fingerprint

    put_all(bucket, "data", {"a/2.png": b"two, edited", "b/4.png": b"four"})
    boto3.client("s3").delete_object(Bucket=bucket, Key="data/a/1.png")
    changed = fetch_data(store, tmp_path)
    assert changed.downloaded == 2
    assert changed.deleted == 1
    assert changed.fingerprint != first.fingerprint
    assert cached_files(changed) == {"a/2.png", "b/3.png", "b/4.png"}
    assert (changed.cache_dir / "a/2.png").read_bytes() == b"two, edited"


def test_keys_that_do_not_map_to_one_safe_path_are_refused_with_the_reason(
    bucket: str, tmp_path: Path
) -> None:
    long_name = "n" * 256 + ".png"
    put_all(bucket, "data", {"a/ok.png": b"ok", "../evil.png": b"x", "a/../../x.png": b"x"})
    put_all(bucket, "data", {"a\\win.png": b"x", "/abs.png": b"x", f"a/{long_name}": b"x"})
    put_all(bucket, "data", {"a//x.png": b"x", "a/./y.png": b"x", "b/": b""})  # b/: a folder

    snapshot = fetch_data(S3Store(bucket, "data"), tmp_path / "deep" / "cache")

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
    assert cached_files(snapshot) == {"a/ok.png"}  # the folder marker b/ is passed over
    written = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"ok.png", MANIFEST_NAME, LOCK_NAME}
    again = fetch_data(S3Store(bucket, "data"), tmp_path / "deep" / "cache")
    assert again.downloaded == 0 and cached_files(again) == {"a/ok.png"}  # the same every night


def test_symbolic_links_out_of_a_local_data_folder_are_refused(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "data", {"a/ok.png": b"ok", "b/in.png": b"in"})
    (tmp_path / "secret.txt").write_text("root:x:0:0")
    (folder / "a" / "passwd.png").symlink_to(tmp_path / "secret.txt")
    (folder / "a" / "alias.png").symlink_to(folder / "b" / "in.png")  # inside: fine

    snapshot = fetch_data(LocalStore(folder), tmp_path / "cache")

    assert [(item.key, item.reason) for item in snapshot.refused] == [
        ("a/passwd.png", "a symbolic link out of the folder")
    ]
    assert cached_files(snapshot) == {"a/ok.png", "a/alias.png", "b/in.png"}
    assert "root:x" not in "".join(path.read_text() for path in snapshot.cache_dir.rglob("*.png"))


class VanishingStore(LocalStore):
    """A real local store where one object is deleted between the listing and its download."""

    def download(self, key: str, destination: Path) -> None:
        if key == "a/gone.png":
            self._path(key).unlink()
        super().download(key, destination)


def test_an_object_that_vanishes_mid_fetch_is_refused_not_fatal(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "data", {"a/ok.png": b"ok", "a/gone.png": b"soon gone"})
    snapshot = fetch_data(VanishingStore(folder), tmp_path / "cache")
    assert [item.key for item in snapshot.refused] == ["a/gone.png"]
    assert "disappeared between the listing and its download" in snapshot.refused[0].reason
    assert cached_files(snapshot) == {"a/ok.png"} and snapshot.file_count == 1


class FailingStore(LocalStore):
    """A real local store whose network drops after a few downloads."""

    def __init__(self, root: Path, fail_after: int) -> None:
        super().__init__(root)
        self.remaining = fail_after

    def download(self, key: str, destination: Path) -> None:
        if self.remaining == 0:
            raise ConnectionError("connection dropped")
        self.remaining -= 1
        super().download(key, destination)


def test_an_interrupted_fetch_leaves_no_partial_file_and_resumes(tmp_path: Path) -> None:
    source = write_files(tmp_path / "source", {f"c/{i}.png": bytes([i]) * 1000 for i in range(20)})
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionError):
        fetch_data(FailingStore(source, fail_after=5), cache)
    for path in cache.rglob("*.png"):
        assert path.stat().st_size == 1000
    assert not list(cache.rglob(".tmp-*"))

    resumed = fetch_data(LocalStore(source), cache)
    assert resumed.file_count == 20
    assert resumed.downloaded == 15
    assert len(cached_files(resumed)) == 20


def image_bytes(mode: str, image_format: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (12, 10, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(), mode=mode).save(buffer, format=image_format)
    return buffer.getvalue()


def snapshot_of(folder: Path, tmp_path: Path) -> DataSnapshot:
    return fetch_data(LocalStore(folder), tmp_path / "cache")


def test_formats_and_channels_are_accepted_and_decode_to_rgb(tmp_path: Path) -> None:
    kinds = {
        "a/gray{}.png": ("L", "PNG"),
        "a/rgba{}.png": ("RGBA", "PNG"),
        "a/photo{}.jpg": ("RGB", "JPEG"),
        "b/anim{}.gif": ("L", "GIF"),
        "b/bitmap{}.bmp": ("RGB", "BMP"),
        "b/gray{}.jpg": ("L", "JPEG"),
    }
    files = {
        name.format(index): image_bytes(*kind) for name, kind in kinds.items() for index in range(4)
    }
    snapshot = snapshot_of(write_files(tmp_path / "data", files), tmp_path)
    data = validate_data(snapshot, tmp_path / "work", 1, 0.0)
    assert data.quarantined == []
    assert data.images_per_class == {"a": 12, "b": 12}
    batches = split_data(data, tmp_path / "work", 16, 8, 0.3, 0.3, cache_decoded=False)
    for subset in ("train", "validation", "test"):
        for images, _ in input_fn(batches, subset, shuffle=False):
            assert images.shape[1:] == (16, 16, 3)
            assert images.dtype.name == "uint8"


def test_bad_files_are_quarantined_with_reasons(tmp_path: Path) -> None:
    good = digit_images(classes=2, per_class=30)
    png = good["0/000.png"]
    bad = {"0/empty.png": b"", "1/notes.png": b"not an image", "1/cut.png": png[: len(png) // 2]}
    bad["stray.png"] = png
    snapshot = snapshot_of(write_files(tmp_path / "data", {**good, **bad}), tmp_path)
    data = validate_data(snapshot, tmp_path / "work", 5, 0.2)
    reasons = {item.path: item.reason for item in data.quarantined}
    assert reasons["0/empty.png"] == "empty file"
    assert reasons["1/notes.png"] == "not an image"
    assert reasons["1/cut.png"].startswith("does not decode")
    assert reasons["stray.png"] == "not inside a class folder"
    index = json.loads(data.index_path.read_text())
    assert len(index) == 60


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
    snapshot = snapshot_of(write_files(tmp_path / "data", {**good, **bad}), tmp_path)
    data = validate_data(snapshot, tmp_path / "work", 5, 0.2)

    reasons = {item.path: item.reason for item in data.quarantined}
    assert reasons["0/bomb.png"].startswith("declares too many pixels to decode safely")
    assert reasons["0/one-bit.bmp"].startswith("does not decode: Number of channels")
    assert reasons["1/rle.bmp"].startswith("does not decode: Input size should match")
    assert reasons["1/bad-crc.png"] == "does not decode: Invalid PNG data, size 852"
    # What passed decodes in training: one epoch over every accepted image.
    batches = split_data(data, tmp_path / "work", 8, 8, 0.15, 0.2, cache_decoded=False)
    for subset in ("train", "validation", "test"):
        assert sum(len(labels) for _, labels in input_fn(batches, subset, shuffle=False)) > 0


def test_the_limits_are_settings_and_a_changed_rule_checks_every_file_again(
    tmp_path: Path,
) -> None:
    big = Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    files = {**digit_images(classes=2, per_class=10), "0/big.png": buffer.getvalue()}
    snapshot = snapshot_of(write_files(tmp_path / "data", files), tmp_path)
    assert validate_data(snapshot, tmp_path / "work", 5, 0.2).quarantined == []

    strict = ValidationRules(max_image_bytes=10_000, max_image_pixels=1000)
    checked = validate_data(snapshot, tmp_path / "work", 5, 0.2, rules=strict)
    reasons = {item.path: item.reason for item in checked.quarantined}
    assert reasons["0/big.png"] == (
        "declares 40x40 pixels, more than RETRAINER_MAX_IMAGE_PIXELS (1,000)"
    )
    assert checked.decoded == 21, "verdicts of other rules were reused"


def test_too_many_bad_files_stop_the_run(tmp_path: Path) -> None:
    files = {**digit_images(classes=2, per_class=5), **{f"0/bad{i}.png": b"" for i in range(5)}}
    snapshot = snapshot_of(write_files(tmp_path / "data", files), tmp_path)
    with pytest.raises(DataError, match="5 of 15 files are unusable"):
        validate_data(snapshot, tmp_path / "work", 1, 0.1)


def test_one_class_or_a_small_class_stops_the_run(tmp_path: Path) -> None:
    one = snapshot_of(write_files(tmp_path / "one", digit_images(1, 10)), tmp_path / "x")
    with pytest.raises(DataError, match="at least two"):
        validate_data(one, tmp_path / "work", 1, 0.1)
    files = {**digit_images(1, 10), "1/000.png": digit_images(2, 1)["1/000.png"]}
    small = snapshot_of(write_files(tmp_path / "small", files), tmp_path / "y")
    with pytest.raises(DataError, match=r"fewer than 5 images: 1 \(1\)"):
        validate_data(small, tmp_path / "work", 5, 0.1)


def test_class_set_change_fails_loudly_by_default_or_is_reported() -> None:
    with pytest.raises(DataError, match=r"new \['fox'\], missing \['dog'\]"):
        compare_class_sets(["cat", "fox"], ["cat", "dog"], "fail")
    change = compare_class_sets(["cat", "dog", "fox"], ["cat", "dog"], "retrain")
    assert change is not None and "new ['fox']" in change
    assert compare_class_sets(["cat"], None, "fail") is None


def test_an_image_never_changes_split_as_the_dataset_grows(tmp_path: Path) -> None:
    images = digit_images(classes=3, per_class=60)
    first_half = {key: data for key, data in images.items() if int(key[2:5]) < 30}
    folder = write_files(tmp_path / "data", first_half)

    def split_now() -> dict[str, set[str]]:
        data = validate_data(snapshot_of(folder, tmp_path), tmp_path / "w", 5, 0.1)
        split = read_split(split_data(data, tmp_path / "w", 8, 8, 0.15, 0.2))
        return {
            name: {example.path for example in split.subset(name)}
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
    data = validate_data(snapshot_of(folder, tmp_path), tmp_path / "w", 5, 0.1)

    def training_images(validation_fraction: float) -> int:
        batches = split_data(data, tmp_path / "w", 8, 8, validation_fraction, 0.2)
        return sum(len(labels) for _, labels in input_fn(batches, "train", shuffle=False))

    few_held_out, many_held_out = training_images(0.1), training_images(0.5)
    assert many_held_out < few_held_out  # no stale split or decoded cache was reused


SUBSETS_IN_ANOTHER_PROCESS = """
import sys
from retrainer.dataset import subset_of
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
