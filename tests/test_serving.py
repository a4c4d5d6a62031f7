"""The hand-off to serving: a SavedModel that takes encoded image bytes, and TF Serving's layout."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrainer.cli import main
from retrainer.data.image import declared_size
from retrainer.data.local import split_here
from retrainer.data.shards import parse_records
from retrainer.data.splits import read_split
from retrainer.gc import collect_garbage
from retrainer.layout import LocalCache
from retrainer.models import build_default_model, with_augmentation
from retrainer.records import PreparationSpec
from retrainer.registry import ModelRegistry
from retrainer.serving import SERVING_SIGNATURE, export_serving_model, predict_files
from retrainer.settings import TrainingConfig
from retrainer.storage import LocalStore
from tests.bad_files import decompression_bomb_png
from tests.conftest import digit_images, publish_stub_version, write_files

# Run in a fresh interpreter that never imports retrainer: only TensorFlow and the bytes.
SERVE_IN_A_FRESH_PROCESS = """
import json, sys
import tensorflow as tf
assert "retrainer" not in sys.modules
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
paths = sys.argv[2:]
outputs = serve(image_bytes=tf.constant([open(path, "rb").read() for path in paths]))
print(json.dumps({
    "probabilities": outputs["probabilities"].numpy().tolist(),
    "class_names": [[n.decode() for n in row] for row in outputs["class_names"].numpy()],
    "leaked": sorted(name for name in sys.modules if name.startswith("retrainer")),
}))
"""


def as_jpeg(png: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow  # a fresh TensorFlow process: 40 s of the fast lane
def test_the_saved_model_serves_raw_jpeg_and_png_bytes_as_training_saw_them(
    tmp_path: Path,
) -> None:
    images = digit_images(classes=2, per_class=20)
    files = {**images, **{key.replace(".png", ".jpg"): as_jpeg(png) for key, png in images.items()}}
    folder = write_files(tmp_path / "images", files)
    config = TrainingConfig(image_size=16, validation_fraction=0.3, test_fraction=0.3)
    data_split = split_here(str(folder), str(tmp_path / "store"), tmp_path / "work", config)
    keras.utils.set_random_seed(3)
    # Augmentation travels inside the model and must do nothing when serving.
    augment = TrainingConfig(augment_flip="horizontal", augment_rotation=0.1)
    model = with_augmentation(build_default_model((16, 16, 3), 2), augment)
    model.save(tmp_path / "model.keras")
    saved = export_serving_model(
        tmp_path / "model.keras",
        data_split.class_names,
        data_split.preprocessing,
        tmp_path / "saved",
    )

    # The Keras model on the pixels training read (the prepared shards), per validation image.
    split_file = read_split(data_split)
    validation = {example.key for example in split_file.validation}
    expected: dict[str, np.ndarray] = {}
    for record in tf.data.TFRecordDataset(split_file.shards["validation"]).batch(64):
        parsed = parse_records(record)
        for key, pixels in zip(parsed["key"].numpy(), parsed["image"].numpy(), strict=True):
            if key.decode() in validation:
                image = np.frombuffer(pixels, np.uint8).reshape(1, 16, 16, 3)
                expected[key.decode()] = model.predict(image, verbose=0)[0]
    keys = sorted(expected)
    assert {key.rsplit(".", 1)[1] for key in keys} == {"png", "jpg"}

    answer = subprocess.run(
        [sys.executable, "-c", SERVE_IN_A_FRESH_PROCESS, str(saved)]
        + [str(folder / key) for key in keys],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    served = json.loads(answer.stdout.strip().splitlines()[-1])
    assert served["leaked"] == []
    difference = np.abs(np.array(served["probabilities"]) - np.array([expected[k] for k in keys]))
    assert difference.max() < 1e-5
    assert served["class_names"] == [data_split.class_names] * len(keys)

    shown = subprocess.run(
        [
            str(Path(sys.executable).parent / "saved_model_cli"),
            "show",
            "--dir",
            str(saved),
            "--all",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    signature = shown.split("signature_def['serving_default']", 1)[1]
    for name in ("image_bytes", "probabilities", "class_names"):
        assert name in signature


def publish_servable(registry: ModelRegistry, *versions: str) -> None:
    for version in versions:
        files = {
            "model.keras": b"k",
            "saved_model/saved_model.pb": f"graph of {version}".encode(),
            "saved_model/variables/variables.index": f"index of {version}".encode(),
        }
        publish_stub_version(registry, version, files, ["a", "b"], serving=SERVING_SIGNATURE)


def served_numbers(registry: ModelRegistry) -> list[int]:
    prefix = f"{registry.keys.serving}/"
    return sorted({int(i.key[len(prefix) :].split("/")[0]) for i in registry.store.list(prefix)})


def test_every_promotion_and_rollback_lays_the_champion_out_for_tensorflow_serving(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_servable(registry, "v1", "v2")

    first = registry.promote("v1", "run-1", "passed", None)
    second = registry.promote("v2", "run-2", "passed", registry.read_champion()[1])
    rolled_back = registry.rollback("run-3", "v2 misbehaves")

    served = [registry.serving_location(c) for c in (first, second, rolled_back)]
    # TF Serving serves the highest: the rolled-back v1.
    assert served_numbers(registry) == [1, 2, 3]
    newest = served[-1]
    assert registry.store.get(newest + "saved_model.pb") == b"graph of v1"
    assert registry.store.get(newest + "variables/variables.index") == b"index of v1"
    assert registry.store.get(served[1] + "saved_model.pb") == b"graph of v2"
    assert registry.serving_problems(rolled_back) == []

    removed = collect_garbage(registry, LocalCache(tmp_path / "cache"), 10, timedelta(0), False)
    assert [line for line in removed if "served" in line] == [
        f"store: {location} (served before the current champion)" for location in served[:2]
    ]
    assert registry.store.get(newest + "saved_model.pb") == b"graph of v1"


def test_a_promotion_from_a_worker_whose_clock_is_behind_is_still_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_servable(registry, "v1", "v2")
    registry.promote("v1", "run-1", "passed", None)

    class BehindClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> BehindClock:
            return cls.fromtimestamp(time.time() - 600, tz)

    monkeypatch.setattr("retrainer.registry.datetime", BehindClock)
    champion = registry.promote("v2", "run-2", "passed", registry.read_champion()[1])

    assert max(served_numbers(registry)) == champion.serving_number
    assert registry.store.get(registry.serving_location(champion) + "saved_model.pb") == (
        b"graph of v2"
    )


def test_a_change_of_champion_cut_short_after_champion_json_is_finished_by_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_servable(registry, "v1", "v2")
    registry.promote("v1", "run-1", "passed", None)
    champion = registry.promote("v2", "run-2", "passed", registry.read_champion()[1])
    # What a kill just after champion.json was written leaves: no history entry, nothing served.
    registry.store.delete(registry.keys.history_entry(champion.serving_number))
    for info in list(registry.store.list(registry.serving_location(champion))):
        registry.store.delete(info.key)
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_MODEL_NAME", "m")

    assert main(["verify"]) == 1
    assert "is served, not the champion's" in capsys.readouterr().out

    done = registry.make_store_match_champion(champion)  # what every run does first

    assert len(done) == 2
    assert registry.read_history()[-1] == champion
    assert main(["verify"]) == 0
    assert registry.make_store_match_champion(champion) == []  # idempotent


def test_the_first_change_after_clock_numbered_serving_folders_is_numbered_above_them(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_servable(registry, "v1", "v2")
    registry.promote("v1", "run-1", "passed", None)
    # champion.json as versions before the counter wrote it: served under its time in microseconds.
    old = json.loads(registry.store.get(registry.keys.champion))
    del old["generation"]
    registry.store.put(registry.keys.champion, json.dumps(old).encode())
    legacy, _ = registry.read_champion()
    assert legacy is not None and legacy.serving_number > 10**15
    registry.make_store_match_champion(legacy)

    champion = registry.promote("v2", "run-2", "passed", registry.read_champion()[1])

    assert champion.serving_number == legacy.serving_number + 1
    assert max(served_numbers(registry)) == champion.serving_number


def image_as(image_format: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format=image_format)
    return buffer.getvalue()


def gif_with_a_frame_larger_than_its_screen(width: int, height: int) -> bytes:
    """A 1x1 GIF screen holding one frame of width x height, as a few dozen bytes."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0, 0, 0)
    comment = b"\x21\xfe\x05hello\x00"  # an extension block before the frame
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + comment + frame + b"\x3b"


def test_the_declared_size_is_read_from_the_header_of_every_accepted_format() -> None:
    for image_format in ("PNG", "JPEG", "GIF", "BMP"):
        contents = tf.constant(image_as(image_format, 37, 23))
        width, height = declared_size(contents)
        assert (int(width), int(height)) == (37, 23), image_format
    assert [int(n) for n in declared_size(tf.constant(b"plain text"))] == [0, 0]
    bomb = tf.constant(gif_with_a_frame_larger_than_its_screen(12000, 12000))
    assert [int(n) for n in declared_size(bomb)] == [12000, 12000]  # the frame, not the screen


def test_the_served_signature_refuses_what_training_refused_before_decoding_a_pixel(
    tmp_path: Path,
) -> None:
    keras.utils.set_random_seed(1)
    build_default_model((8, 8, 3), 2).save(tmp_path / "model.keras")
    spec = PreparationSpec.of(TrainingConfig(image_size=8, max_image_bytes=5_000))
    saved = export_serving_model(tmp_path / "model.keras", ["a", "b"], spec, tmp_path / "saved")
    files = {
        "bomb.png": decompression_bomb_png(20000, 20000),  # 0.4 KB declaring 400 megapixels
        "huge.bmp": image_as("BMP", 64, 64),  # 12 KB
        "frame.gif": gif_with_a_frame_larger_than_its_screen(12000, 12000),  # a 1x1 screen
        "photo.webp": image_as("WEBP", 16, 16),  # the decoder reads it; training does not
        "fine.gif": image_as("GIF", 64, 64),
    }
    for name, contents in files.items():
        (tmp_path / name).write_bytes(contents)

    predictions = predict_files(saved, [tmp_path / name for name in files])

    assert [prediction.problem for prediction in predictions] == [
        "refused: declares more than 64,000,000 pixels (RETRAINER_MAX_IMAGE_PIXELS)",
        "refused: more than 5,000 bytes (RETRAINER_MAX_IMAGE_BYTES)",
        "refused: declares more than 64,000,000 pixels (RETRAINER_MAX_IMAGE_PIXELS)",
        "refused: not a JPEG, PNG, GIF or BMP file (the formats training accepts)",
        None,
    ]


def test_gc_keeps_the_champions_served_folder_by_its_number_not_because_it_is_highest(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path / "store"), "m")
    publish_servable(registry, "v1")
    champion = registry.promote("v1", "run-1", "passed", None)
    # A folder numbered above it, as a worker whose clock ran ahead used to leave.
    registry.store.put(f"{registry.keys.serving}/{10**16}/saved_model.pb", b"stale")

    collect_garbage(registry, LocalCache(tmp_path / "cache"), 10, timedelta(0), False)

    served = registry.serving_location(champion) + "saved_model.pb"
    assert registry.store.get(served) == b"graph of v1"
    assert served_numbers(registry) == [champion.serving_number]


def serving_graph(saved: Path) -> str:
    """The serving signature's graph, functions included, as text."""
    loaded = tf.saved_model.load(str(saved))
    return str(loaded.signatures["serving_default"].graph.as_graph_def())


def test_a_model_trained_in_mixed_precision_is_served_in_float32_with_the_same_classes(
    tmp_path: Path,
) -> None:
    keras.utils.set_random_seed(5)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_default_model((16, 16, 3), 3)  # float16 kernels, as a GPU night trains it
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.save(tmp_path / "model.keras")
    spec = PreparationSpec(image_size=16, max_image_bytes=10**6, max_image_pixels=10**6)
    saved = export_serving_model(tmp_path / "model.keras", ["a", "b", "c"], spec, tmp_path / "s")

    assert "DT_HALF" not in serving_graph(saved)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    served = tf.saved_model.load(str(saved)).signatures["serving_default"](
        image_bytes=tf.constant(files)
    )
    expected = mixed.predict(pixels, verbose=0)
    assert served["probabilities"].dtype == tf.float32
    assert np.array_equal(np.argmax(served["probabilities"], 1), np.argmax(expected, 1))
    assert np.allclose(served["probabilities"], expected, atol=2e-3)  # float16's own rounding
