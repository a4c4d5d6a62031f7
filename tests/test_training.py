"""Training: device choices, user models, warm start, NaN, and resuming after a SIGKILL."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from flows.retrain import retrain
from retrainer.checkpoints import CheckpointMirror
from retrainer.data.local import split_here
from retrainer.devices import plan_devices
from retrainer.storage import LocalStore, ObjectStore, S3Store
from tests import records
from tests.conftest import digit_images, write_files

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("capabilities", "setting", "kind", "devices", "precision"),
    [
        ([], "auto", "cpu", ("/CPU:0",), "float32"),
        ([(8, 0)], "auto", "gpu", ("/GPU:0",), "mixed_bfloat16"),
        ([(7, 5)], "auto", "gpu", ("/GPU:0",), "mixed_float16"),
        ([(9, 0)], "on", "gpu", ("/GPU:0",), "mixed_bfloat16"),
        ([(6, 1)], "auto", "gpu", ("/GPU:0",), "float32"),
        ([None], "auto", "gpu", ("/GPU:0",), "float32"),
        ([(8, 6), (8, 6)], "auto", "multi-gpu", ("/GPU:0", "/GPU:1"), "mixed_bfloat16"),
        ([(8, 6), (7, 0)], "auto", "multi-gpu", ("/GPU:0", "/GPU:1"), "mixed_float16"),
        ([(8, 6), (6, 0)], "auto", "multi-gpu", ("/GPU:0", "/GPU:1"), "float32"),
        ([(8, 0)], "off", "gpu", ("/GPU:0",), "float32"),
        ([(6, 1)], "on", "gpu", ("/GPU:0",), "mixed_float16"),
    ],
)
def test_the_device_plan_follows_the_gpus_found_and_the_setting(
    capabilities: list[tuple[int, int] | None],
    setting: str,
    kind: str,
    devices: tuple[str, ...],
    precision: str,
) -> None:
    plan = plan_devices(capabilities, setting)
    assert (plan.kind, plan.devices, plan.precision) == (kind, devices, precision)
    if kind == "cpu":
        assert plan.description.startswith("No GPU found: training on the CPU")


def test_auto_precision_keeps_float32_for_fine_tuning_a_backbone_on_any_gpu() -> None:
    # Measured on an H200: bfloat16 fine-tuned MobileNetV3 and EfficientNetV2 at 0.56-0.72x.
    assert plan_devices([(9, 0)], "auto", fine_tuning=True).precision == "float32"
    assert plan_devices([(9, 0)], "auto").precision == "mixed_bfloat16"
    assert plan_devices([(9, 0)], "on", fine_tuning=True).precision == "mixed_bfloat16"


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import logging
    import sys
    from pathlib import Path
    import tensorflow as tf

    logging.basicConfig(level=logging.INFO)

    # Two logical CPUs stand in for two GPUs; this must happen before TensorFlow starts.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from retrainer.checkpoints import checkpoint_mirror
    from retrainer.data.local import split_here
    from retrainer.settings import load_settings
    from retrainer.storage import LocalStore
    from retrainer.devices import DevicePlan
    from retrainer.training import train_model

    work = Path(sys.argv[1])
    settings = load_settings(epochs=2, batch_size=8, image_size=16, early_stopping_patience=0)
    config = settings.training_config()
    data_split = split_here(str(work / "images"), str(work / "store"), work / "w", config)
    plan = DevicePlan("multi-gpu", ("/cpu:0", "/cpu:1"), "float32", "2 replicas")
    mirror = checkpoint_mirror(LocalStore(work / "store"), work / "cache", "m", "k" * 32)
    trained = train_model(data_split, settings.training_config(), work / "out", mirror, plan=plan)
    print("EPOCHS", trained.epochs_run)
    """
)


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_replicas(tmp_path: Path) -> None:
    write_files(tmp_path / "images", digit_images(classes=3, per_class=30))
    answer = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPOSITORY,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "EPOCHS 2" in answer.stdout
    # The replica count is the strategy's own, as fit ran under it, not the plan's arithmetic.
    assert "batch size 16 (8 per replica on 2 replica(s))" in answer.stderr


@pytest.fixture
def small_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = write_files(tmp_path / "images", digit_images(classes=3, per_class=40))
    monkeypatch.setenv("RETRAINER_STORE_URL", str(tmp_path / "store"))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data))
    monkeypatch.setenv("RETRAINER_IMAGE_SIZE", "16")
    monkeypatch.setenv("RETRAINER_BATCH_SIZE", "16")
    monkeypatch.setenv("RETRAINER_EPOCHS", "3")
    monkeypatch.setenv("RETRAINER_GATE__ACCURACY__THRESHOLD", "0.0")
    return tmp_path / "store"


def champion_manifest(store: ObjectStore, model: str = "demo") -> dict[str, object]:
    champion = json.loads(store.get(f"models/{model}/champion.json"))
    return json.loads(store.get(f"models/{model}/versions/{champion['version']}/manifest.json"))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_user_model_factory_outside_the_package_trains_and_publishes(
    small_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:tiny_cnn")
    outcome = retrain()
    assert outcome.promoted
    store = LocalStore(small_run)
    manifest = champion_manifest(store)
    assert manifest["parameters"]["model_factory"] == "tests.user_models:tiny_cnn"
    model_file = small_run.parent / "user.keras"
    model_file.write_bytes(store.get(f"models/demo/versions/{outcome.version}/model.keras"))
    model = keras.models.load_model(model_file)
    assert model.name == "user_tiny_cnn"
    assert [layer.name for layer in model.layers][-1] == "user_head"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_logits_factory_serves_probabilities_and_user_callbacks_run_every_epoch(
    small_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    epochs_file = tmp_path / "epochs.txt"
    monkeypatch.setenv("USER_CALLBACK_FILE", str(epochs_file))
    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:logits_cnn")
    monkeypatch.setenv("RETRAINER_CALLBACKS", "tests.user_models:epoch_file_writer")
    outcome = retrain()
    assert outcome.promoted
    store = LocalStore(small_run)
    manifest = champion_manifest(store)
    assert manifest["parameters"]["callbacks"] == "tests.user_models:epoch_file_writer"
    assert str(manifest["code"]["callbacks"]).startswith("sha256:")
    history = json.loads(store.get(f"models/demo/versions/{outcome.version}/history.json"))
    lines = epochs_file.read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [1, 2, 3]
    assert [float(line.split()[1]) for line in lines] == pytest.approx(history["loss"], abs=1e-5)
    # Probabilities, as the gate scored them and a server gets them: not logits.
    metrics = json.loads(store.get(f"models/demo/versions/{outcome.version}/metrics.json"))
    assert 0.05 < metrics["test_loss"] < 5
    from retrainer.registry import ModelRegistry
    from retrainer.serving import download_serving_model, predict_files

    saved = download_serving_model(ModelRegistry(store, "demo"), outcome.version, tmp_path)
    images = sorted((small_run.parent / "images").rglob("*.png"))[:3]
    for prediction in predict_files(saved, images):
        assert prediction.class_name is not None and 0 < prediction.probability <= 1


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_nan_loss_is_rejected_with_its_reason_and_the_champion_stays(
    small_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = retrain()
    assert first.promoted
    champion_before = (small_run / "models/demo/champion.json").read_bytes()

    monkeypatch.setenv("RETRAINER_MODEL_FACTORY", "tests.user_models:exploding_cnn")
    monkeypatch.setenv("RETRAINER_WARM_START", "never")
    nan_run = retrain()

    assert nan_run.status == "rejected"
    assert "the training loss became NaN in epoch 1" in nan_run.message
    assert (small_run / "models/demo/champion.json").read_bytes() == champion_before


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_warm_start_begins_from_the_champions_weights(
    small_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = retrain()
    store = LocalStore(small_run)

    # One epoch at a learning rate too small to move any weight visibly: what comes out is what
    # went in, so the candidate's weights show where training started.
    warm = retrain(epochs=1, learning_rate=1e-12)

    def kernel(version: str | None) -> np.ndarray:
        path = tmp_path / f"{version}.keras"
        path.write_bytes(store.get(f"models/demo/versions/{version}/model.keras"))
        return keras.models.load_model(path).get_layer("classifier").get_weights()[0]

    assert np.allclose(kernel(warm.version), kernel(first.version), atol=1e-6)
    warm_manifest = json.loads(store.get(f"models/demo/versions/{warm.version}/manifest.json"))
    assert warm_manifest["started_from"] == f"champion {first.version}"

    monkeypatch.setenv("RETRAINER_WARM_START", "never")
    fresh = retrain(epochs=1, learning_rate=1e-12, force=True)
    assert not np.allclose(kernel(fresh.version), kernel(first.version), atol=1e-3)


def killable_run_env(
    bucket: str, tmp_path: Path, prefect_api_url: str, epochs: int
) -> dict[str, str]:
    """The environment of a `retrainer run` subprocess on 1,200 digits, long enough to kill."""
    data = write_files(tmp_path / "images", digit_images(classes=10, per_class=120))
    return {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "PREFECT_API_URL": prefect_api_url,
        "RETRAINER_STORE_URL": f"s3://{bucket}/registry",
        "RETRAINER_DATA_URL": str(data),
        "RETRAINER_CACHE_DIR": str(tmp_path / "cache"),
        "RETRAINER_IMAGE_SIZE": "48",
        "RETRAINER_EPOCHS": str(epochs),
        "RETRAINER_GATE__ACCURACY__THRESHOLD": "0.0",
    }


def sealed_checkpoint(mirror: CheckpointMirror, epoch: int) -> None:
    """What Keras' BackupAndRestore and our epoch-end callback leave after `epoch`, sealed."""
    mirror.local_dir.mkdir(parents=True, exist_ok=True)
    (mirror.local_dir / "latest.weights.h5").write_bytes(b"weights of epoch %d" % epoch)
    (mirror.local_dir / "training_metadata.json").write_text(json.dumps({"epoch": epoch - 1}))
    (mirror.local_dir / "history.json").write_text(json.dumps({"loss": [1.0] * epoch}))
    mirror.save(epoch)


def test_a_torn_local_checkpoint_is_discarded_for_the_stores_copy(tmp_path: Path) -> None:
    mirror = CheckpointMirror(LocalStore(tmp_path / "store"), "checkpoints/m/k", tmp_path / "ck")
    sealed_checkpoint(mirror, epoch=2)
    # A kill while Keras rewrote the weights of epoch 3: the file is half there.
    (mirror.local_dir / "latest.weights.h5").write_bytes(b"weig")

    assert mirror.restore() == 2
    assert (mirror.local_dir / "latest.weights.h5").read_bytes() == b"weights of epoch 2"


def test_a_pointer_to_missing_or_damaged_checkpoint_files_counts_as_none(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    mirror = CheckpointMirror(store, "checkpoints/m/k", tmp_path / "ck")
    sealed_checkpoint(mirror, epoch=3)
    store.put("checkpoints/m/k/epoch-00003/latest.weights.h5", b"damaged")
    shutil.rmtree(mirror.local_dir)
    assert mirror.restore() == 0
    assert not any(mirror.local_dir.iterdir()), "damaged files were kept for Keras to load"

    store.delete("checkpoints/m/k/epoch-00003/latest.weights.h5")
    assert mirror.restore() == 0


def output_until(process: subprocess.Popen[str], marker: str) -> str:
    """What `process` printed up to and including the first line that holds `marker`."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            break
    return "".join(seen)


def start_run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "retrainer"), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPOSITORY,
    )


# One test, three processes: every `retrainer run` pays for Python, TensorFlow and Prefect.
@pytest.mark.slow
def test_sigkills_on_a_worker_and_on_a_cold_one_end_in_one_complete_history(
    bucket: str, tmp_path: Path, prefect_api_url: str
) -> None:
    seed = int(os.environ.get("TEST_KILL_SEED", random.randrange(1 << 30)))
    env = killable_run_env(bucket, tmp_path, prefect_api_url, epochs=6)
    env["RETRAINER_EARLY_STOPPING_PATIENCE"] = "0"
    env["RETRAINER_LOG_LEVEL"] = "DEBUG"  # every checkpoint line, not only the first

    first = start_run(env)
    output_until(first, "Checkpoint of epoch 2 saved")
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    checkpoints = tmp_path / "cache" / "checkpoints"
    assert any(checkpoints.rglob("latest.weights.h5"))
    for path in sorted(checkpoints.rglob("*"), reverse=True):  # a new worker: an empty disk
        path.unlink() if path.is_file() else path.rmdir()

    second = start_run(env)
    resumed = output_until(second, "Training for")
    assert "Restored the checkpoint after epoch 2 from s3://" in resumed, resumed[-3000:]
    assert "Resuming at epoch 3 of 6" in resumed
    # Anywhere in the next few epochs: mid-batch, mid-checkpoint write, mid-upload.
    delay = random.Random(seed).uniform(0.0, 6.0)
    time.sleep(delay)
    second.send_signal(signal.SIGKILL)
    second.wait(60)

    final = subprocess.run(
        [str(Path(sys.executable).parent / "retrainer"), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPOSITORY,
    )
    output = final.stdout + final.stderr
    context = f"seed {seed}, killed {delay:.2f} s into the resumed run:\n{output[-3000:]}"
    assert final.returncode == 0, context
    assert "Epoch 1/6" not in output and "Epoch 6/6" in output, context
    store = S3Store(bucket, "registry")
    assert champion_manifest(store)["resumed_from_epoch"] >= 2, context
    champion = json.loads(store.get("models/demo/champion.json"))
    history = json.loads(store.get(f"models/demo/versions/{champion['version']}/history.json"))
    assert len(history["loss"]) == len(history["val_loss"]) == 6, context
    assert not list(store.list("checkpoints/")), "finished work leaves no checkpoints"


def test_warm_start_honours_mixed_precision_with_the_champions_weights(tmp_path: Path) -> None:
    from retrainer.champion import WarmStart
    from retrainer.models import build_default_model, build_model
    from retrainer.settings import TrainingConfig

    champion = build_default_model((16, 16, 3), 3)  # saved in float32, as a CPU night saves it
    champion.save(tmp_path / "champion.keras")
    record = records.champion_record(class_names=["a", "b", "c"])
    data_split = records.data_split(class_names=["a", "b", "c"])  # of 16 px images
    config = TrainingConfig(mixed_precision="on")
    loaded = keras.models.load_model(tmp_path / "champion.keras", compile=False)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, started_from = build_model(
            config, data_split, WarmStart("champion v1", record, loaded)
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")

    assert started_from == "champion v1"
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == "mixed_float16"
    assert model.get_layer("classifier").dtype_policy.name == "float32"  # softmax in float32
    for mine, theirs in zip(model.get_weights(), champion.get_weights(), strict=True):
        assert np.array_equal(mine, theirs)


def test_a_gpu_that_is_required_and_missing_stops_the_run_with_tensorflows_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retrainer.cli import main

    monkeypatch.setenv("RETRAINER_DEVICE", "gpu")
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "d", {"a/1.png": b"x"})))
    assert main(["run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: RETRAINER_DEVICE=gpu, but TensorFlow found no usable GPU")
    assert "TensorFlow said:" in line
    assert not (tmp_path / ".retrainer" / "cache").exists(), "data was fetched"


def test_running_out_of_device_memory_is_not_retried_and_says_what_to_lower(
    tmp_path: Path,
) -> None:
    from retrainer.checkpoints import checkpoint_mirror
    from retrainer.errors import BadInput
    from retrainer.settings import TrainingConfig
    from retrainer.training import OutOfDeviceMemory, train_model

    images = write_files(tmp_path / "i", digit_images(3, 20))
    config = TrainingConfig(
        epochs=1, image_size=16, batch_size=8, model_factory="tests.user_models:out_of_memory"
    )
    data_split = split_here(str(images), str(tmp_path / "store"), tmp_path / "w", config)
    mirror = checkpoint_mirror(LocalStore(tmp_path / "store"), tmp_path / "c", "m", "k" * 32)
    with pytest.raises(OutOfDeviceMemory, match="lower RETRAINER_BATCH_SIZE") as raised:
        train_model(data_split, config, tmp_path / "out", mirror)
    assert isinstance(raised.value, BadInput)  # the retry rule lets it through at once
    assert "batches of 8 images of 16 px" in str(raised.value)


@pytest.mark.slow
def test_tensorflow_start_up_stays_out_of_the_output_but_its_gpu_reason_is_kept() -> None:
    script = (
        "from retrainer.tensorflow_runtime import start_tensorflow\n"
        "start_up = start_tensorflow()\n"
        "print('GPUS', start_up.gpus, '|'.join(start_up.gpu_messages))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
        env={key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("GPUS 0 ")
    assert "cuda" in answer.stdout.lower()  # what TensorFlow said about the GPU it could not use
    assert "absl::InitializeLog" not in answer.stderr
    assert ".cc:" not in answer.stderr, answer.stderr
    assert "rebuild TensorFlow" not in answer.stderr  # a start-up line's continuation


ARENAS_SCRIPT = """
import ctypes, os, sys, threading
if sys.argv[1] == "import":
    import retrainer
threads = 3 * max(2, len(os.sched_getaffinity(0)))
barrier = threading.Barrier(threads + 1)
def allocate():
    block = bytearray(4096)  # from glibc's malloc, in this thread
    barrier.wait()
    barrier.wait()
workers = [threading.Thread(target=allocate) for _ in range(threads)]
for worker in workers:
    worker.start()
barrier.wait()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" paragraph per arena, on stderr
barrier.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas")
def test_importing_retrainer_caps_malloc_arenas_at_one_per_core_unless_the_user_set_them() -> None:
    def arenas(mode: str, **environment: str) -> int:
        answer = subprocess.run(
            [sys.executable, "-c", ARENAS_SCRIPT, mode],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPOSITORY,
            env={**os.environ, **environment},
        )
        assert answer.returncode == 0, answer.stderr
        return len(re.findall(r"^Arena \d+:$", answer.stderr, re.MULTILINE))

    cap = max(2, len(os.sched_getaffinity(0)))
    assert arenas("plain") > cap  # glibc's own default: an arena per thread, up to 8 per core
    assert arenas("import") == cap
    assert arenas("import", MALLOC_ARENA_MAX="1") == 1


def test_balanced_class_weights_come_from_the_training_counts() -> None:
    from retrainer.settings import TrainingConfig
    from retrainer.training import class_weights

    imbalanced = records.data_split(train_per_class={"cat": 30, "dog": 10})
    assert class_weights(imbalanced, TrainingConfig()) == pytest.approx({0: 40 / 60, 1: 2.0})
    assert class_weights(imbalanced, TrainingConfig(class_weights="none")) is None
    balanced = records.data_split(train_per_class={"cat": 10, "dog": 10})
    assert class_weights(balanced, TrainingConfig()) is None


def test_augmentation_changes_images_in_training_and_nothing_at_inference() -> None:
    from retrainer.models import with_augmentation
    from retrainer.settings import TrainingConfig

    inputs = keras.Input((16, 16, 3))
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(scaled)))
    config = TrainingConfig(
        augment_flip="horizontal", augment_rotation=0.1, augment_zoom=0.2, augment_contrast=0.3
    )
    augmented = with_augmentation(plain, config)
    images = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)

    served = augmented(images, training=False).numpy()
    np.testing.assert_allclose(served, plain(images, training=False).numpy(), atol=1e-6)
    assert not np.allclose(augmented(images, training=True).numpy(), served, atol=1e-3)
    assert with_augmentation(plain, TrainingConfig()) is plain  # none configured: unchanged


def test_the_kept_epoch_is_the_best_validation_loss_of_the_last_phase_since_the_resume() -> None:
    from retrainer.settings import TrainingConfig
    from retrainer.training import kept_epoch, still_improving

    history = {"loss": [1.0] * 6, "val_loss": [0.9, 0.5, 0.7, 0.6, 0.8, 0.75]}
    config = TrainingConfig(epochs=6, early_stopping_patience=3)
    assert kept_epoch(history, config, resumed_from=0) == 2
    assert kept_epoch(history, config, resumed_from=2) == 4  # EarlyStopping saw epochs 3-6
    fine_tuning = TrainingConfig(
        epochs=3,
        fine_tune_epochs=3,
        backbone="mobilenet_v3_small",
        backbone_weights="imagenet",
        early_stopping_patience=3,
    )
    assert kept_epoch(history, fine_tuning, resumed_from=0) == 4  # the frozen phase never stops
    assert kept_epoch(history, config.model_copy(update={"early_stopping_patience": 0}), 0) == 6
    assert not still_improving(history)
    assert still_improving({"loss": [1.0, 1.0], "val_loss": [0.9, 0.8]})


# TensorFlow 2.21's own build: what its wheels carry for each GPU generation.
TF_2_21_BUILT_FOR = ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"]


@pytest.mark.parametrize(
    ("capability", "kernels"),
    [
        ((6, 1), "machine code"),  # Pascal: sm_60 runs on 6.1
        ((7, 5), "machine code"),  # Turing (T4): sm_70
        ((8, 6), "machine code"),  # Ampere (A10): sm_80
        ((8, 9), "machine code"),  # Ada (L4)
        ((9, 0), "PTX"),  # Hopper (H100, H200): compiled by the driver at start-up
        ((10, 0), None),  # Blackwell (B200)
        ((12, 0), None),  # Blackwell (RTX 50)
        ((5, 2), None),  # Maxwell
    ],
)
def test_the_kernels_a_gpu_gets_follow_tensorflows_build(
    capability: tuple[int, int], kernels: str | None
) -> None:
    from retrainer.devices import kernels_for

    assert kernels_for(capability, TF_2_21_BUILT_FOR) == kernels


def fake_gpus(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    """TensorFlow's device list and build info, faked at the boundary: one GPU of this kind."""
    import tensorflow as tf

    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda device, grow: None)
    monkeypatch.setattr(
        tf.config.experimental,
        "get_device_details",
        lambda device: {"device_name": name, "compute_capability": capability},
    )
    build = {
        "is_cuda_build": True,
        "cuda_compute_capabilities": TF_2_21_BUILT_FOR,
        "cuda_version": "12.5.1",
        "cudnn_version": "9",
    }
    monkeypatch.setattr(tf.sysconfig, "get_build_info", lambda: build)


def test_a_gpu_without_kernels_in_tensorflow_stops_the_run_before_any_download(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retrainer.cli import main

    fake_gpus(monkeypatch, "NVIDIA B200", (10, 0))
    monkeypatch.setenv("RETRAINER_DEVICE", "gpu")
    monkeypatch.setenv("RETRAINER_DATA_URL", str(write_files(tmp_path / "d", {"a/1.png": b"x"})))
    assert main(["run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "error: GPU 0 (NVIDIA B200, compute capability 10.0): TensorFlow 2.21.0 has no kernels "
        "for it (machine code for 6.0, 7.0, 8.0, 8.9 and PTX for 9.0)"
    )
    assert not (tmp_path / ".retrainer" / "cache").exists(), "data was fetched"


def test_a_hopper_gpu_trains_and_the_log_says_its_kernels_compile_from_ptx(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrainer.devices import detect_devices

    fake_gpus(monkeypatch, "NVIDIA H200", (9, 0))
    with caplog.at_level("WARNING", logger="retrainer.devices"):
        plan = detect_devices("auto", "gpu")
    assert (plan.kind, plan.precision) == ("gpu", "mixed_bfloat16")
    assert "GPU 0 (NVIDIA H200, compute capability 9.0): TensorFlow 2.21.0 has no machine code" in (
        caplog.text
    )
    assert "compiles its kernels from PTX at start-up" in caplog.text


def test_doctor_names_each_gpu_with_its_kernels_and_fails_on_one_without(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retrainer.cli import main

    data = write_files(tmp_path / "d", digit_images(classes=2, per_class=2))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data))  # a data source the doctor can reach
    fake_gpus(monkeypatch, "NVIDIA H200", (9, 0))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "TensorFlow: 2.21.0, CUDA 12.5.1" in out
    assert "GPU 0: NVIDIA H200, compute capability 9.0: kernels compiled from PTX" in out
    assert "Memory allocator: glibc's malloc" in out  # pytest runs without tcmalloc preloaded
    assert out.rstrip().endswith("Ready for the nightly job")

    fake_gpus(monkeypatch, "NVIDIA B200", (10, 0))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "MISSING GPU 0: NVIDIA B200, compute capability 10.0: NO kernels" in out
    assert out.rstrip().endswith("Not ready for the nightly job: GPU 0")


def test_the_doctor_names_the_malloc_in_use_and_says_how_to_preload_tcmalloc() -> None:
    from retrainer.doctor import TCMALLOC, allocator_finding

    glibc = allocator_finding("7f1 r-xp 00000000 08:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert glibc.said.startswith("glibc's malloc")
    assert f"LD_PRELOAD={TCMALLOC}" in glibc.said
    assert not glibc.missing  # a night still runs on glibc, with more memory
    tcmalloc = allocator_finding(f"7f2 r-xp 00000000 08:01 9 {TCMALLOC}\n")
    assert tcmalloc.said.startswith("tcmalloc: ")


@pytest.mark.slow  # prepares the demo digits and trains twice: 14 s of the fast lane
def test_doctor_benchmark_measures_each_precision_and_the_input_pipeline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from retrainer.cli import main

    data = write_files(tmp_path / "d", digit_images(classes=2, per_class=2))
    monkeypatch.setenv("RETRAINER_DATA_URL", str(data))  # a data source the doctor can reach
    monkeypatch.setenv("RETRAINER_IMAGE_SIZE", "16")
    monkeypatch.setenv("RETRAINER_BATCH_SIZE", "8")
    fake_gpus(monkeypatch, "NVIDIA H200", (9, 0))
    assert main(["doctor", "--benchmark"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Training images/s: float32 [\d,]+, mixed_bfloat16 [\d,]+ \(", out)
    assert re.search(r"Input images/s: [\d,]+ streamed from the shards, [\d,]+ held in memory", out)


def test_the_doctor_picks_the_precision_that_makes_a_backbones_night_shorter() -> None:
    from retrainer.doctor import precision_finding
    from retrainer.settings import load_settings

    # Shaped like the H200 figures of issue 23: bfloat16 1.24x frozen, 0.59x fine-tuning.
    speeds = {
        "float32": {"frozen": 25_000.0, "fine-tuning": 13_500.0},
        "mixed_bfloat16": {"frozen": 31_000.0, "fine-tuning": 8_000.0},
    }
    settings = load_settings(
        backbone="mobilenet_v3_small",
        backbone_weights="s3://weights/mobilenet_v3_small.weights.h5",
        epochs=5,
        fine_tune_epochs=5,
    )
    said = precision_finding(settings, speeds).said
    assert said.startswith("frozen: float32 25,000, mixed_bfloat16 31,000; fine-tuning: ")
    assert "float32 is faster here over a night's epochs of each phase" in said
    assert said.endswith("RETRAINER_MIXED_PRECISION=off makes it the choice")

    mostly_frozen = settings.model_copy(update={"epochs": 50, "fine_tune_epochs": 1})
    assert "mixed_bfloat16 is faster" in precision_finding(mostly_frozen, speeds).said


def test_kernels_compiled_on_the_first_night_are_restored_on_a_fresh_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from importlib.metadata import version

    from retrainer.compute_cache import kept_cuda_cache

    store = LocalStore(tmp_path / "store")
    first_node = tmp_path / "node-1" / "cuda"
    monkeypatch.setenv("CUDA_CACHE_PATH", str(first_node))
    with (
        caplog.at_level("INFO", logger="retrainer.compute_cache"),
        kept_cuda_cache(store, "NVIDIA H200 9.0"),
    ):
        (first_node / "ComputeCache" / "a").mkdir(parents=True)  # what the driver compiles
        (first_node / "ComputeCache" / "a" / "kernels").write_bytes(b"sm_90 code" * 1000)
    assert "the driver compiles the kernels now, this once" in caplog.text
    (kept,) = [info.key for info in store.list("_retrainer/cuda-cache/")]
    assert kept.startswith("_retrainer/cuda-cache/nvidia-h200-9.0-driver-")
    assert kept.endswith(f"-tensorflow-{version('tensorflow')}.tar.gz")

    caplog.clear()
    fresh_node = tmp_path / "node-2" / "cuda"
    monkeypatch.setenv("CUDA_CACHE_PATH", str(fresh_node))
    with (
        caplog.at_level("INFO", logger="retrainer.compute_cache"),
        kept_cuda_cache(store, "NVIDIA H200 9.0"),
    ):
        restored = (fresh_node / "ComputeCache" / "a" / "kernels").read_bytes()
    assert restored == b"sm_90 code" * 1000
    assert "Restored the CUDA compute cache for NVIDIA H200 9.0" in caplog.text
    assert "Kept the CUDA compute cache" not in caplog.text  # nothing new was compiled

    # A GPU with machine code in TensorFlow's build compiles nothing: the store is not touched.
    with kept_cuda_cache(store, None):
        pass
    assert len(list(store.list("_retrainer/cuda-cache/"))) == 1

    # A damaged copy in the store costs a compile, never the run.
    store.put(kept, b"half an archive")
    caplog.clear()
    monkeypatch.setenv("CUDA_CACHE_PATH", str(tmp_path / "node-3" / "cuda"))
    with (
        caplog.at_level("INFO", logger="retrainer.compute_cache"),
        kept_cuda_cache(store, "NVIDIA H200 9.0"),
    ):
        pass
    assert "The CUDA compute cache could not be restored" in caplog.text
    assert "the driver compiles the kernels now" in caplog.text


def test_the_driver_version_is_read_from_the_kernel_module(tmp_path: Path) -> None:
    from retrainer.compute_cache import driver_version

    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03  Fri Aug 16 2024\n")
    assert driver_version(proc) == "560.35.03"
    assert driver_version(tmp_path / "missing") == "unknown"
