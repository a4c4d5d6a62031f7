"""`retrainer doctor`: what this node gives a run, on one screen, and what is missing.

The first step on a new GPU pool: TensorFlow's build, the GPUs it sees and the kernels it has for
them, the CUDA cache, the stores and the cache volume; with `--benchmark` the configured model's
training speed in float32 and in mixed precision (each phase of a backbone: frozen, fine-tuning),
and the input pipeline's rate, measured here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from retrainer.compute_cache import cuda_cache_folder, driver_version, folder_bytes
from retrainer.devices import GpuSeen, describe_build, kernels_for
from retrainer.errors import BadInput
from retrainer.layout import DEMO_DATA
from retrainer.preflight import check_stores
from retrainer.settings import Settings
from retrainer.storage import LocalStore
from retrainer.tensorflow_runtime import start_tensorflow

if TYPE_CHECKING:
    import keras

# Below this, a night's shards, checkpoints and CUDA cache may not fit on the cache volume.
MIN_FREE_CACHE_BYTES = 5 * 1024**3


# Where Debian's libtcmalloc-minimal4 puts it on x86_64; the image preloads it from here.
TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


@dataclass(frozen=True)
class Finding:
    topic: str
    said: str
    missing: bool = False  # a required piece is missing: the node cannot run the nightly job


def tensorflow_build() -> tuple[list[str], Finding]:
    """The compute capabilities TensorFlow was built for, and what to say of its build."""
    start_tensorflow()
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    built_for = list(build.get("cuda_compute_capabilities", []))
    if not build.get("is_cuda_build"):
        return [], Finding("TensorFlow", f"{tf.__version__}, built without CUDA")
    said = (
        f"{tf.__version__}, CUDA {build.get('cuda_version')}, cuDNN {build.get('cudnn_version')}; "
        f"{describe_build(built_for)}"
    )
    return built_for, Finding("TensorFlow", said)


def gpus_seen() -> list[GpuSeen]:
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(
            GpuSeen(details.get("device_name", gpu.name), details.get("compute_capability"))
        )
    return gpus


def driver_report() -> list[str]:
    """`name, memory, driver` per GPU from nvidia-smi, which the NVIDIA toolkit mounts with the
    `utility` capability; empty where it is not there."""
    if not shutil.which("nvidia-smi"):
        return []
    answer = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return answer.stdout.strip().splitlines() if answer.returncode == 0 else []


def gpu_findings(gpus: list[GpuSeen], built_for: list[str], settings: Settings) -> list[Finding]:
    if not gpus:
        reason = "; ".join(start_tensorflow().gpu_messages) or "none visible to TensorFlow"
        return [Finding("GPUs", f"none ({reason})", missing=settings.device == "gpu")]
    findings = []
    drivers = driver_report()
    for index, gpu in enumerate(gpus):
        driver = drivers[index] if index < len(drivers) else "driver: no nvidia-smi here"
        if gpu.capability is None:
            findings.append(Finding(f"GPU {index}", f"{gpu.name}, capability unknown; {driver}"))
            continue
        kernels = kernels_for(gpu.capability, built_for)
        capability = f"{gpu.capability[0]}.{gpu.capability[1]}"
        how = {
            "machine code": "machine code in TensorFlow's build",
            "PTX": "kernels compiled from PTX by the driver at start-up (minutes, then cached)",
            None: "NO kernels in TensorFlow's build: runs would fail",
        }[kernels]
        findings.append(
            Finding(
                f"GPU {index}",
                f"{gpu.name}, compute capability {capability}: {how}; {driver}",
                missing=kernels is None,
            )
        )
    return findings


def cuda_cache_finding() -> Finding:
    folder = cuda_cache_folder()
    size = folder_bytes(folder) / 1e6 if folder.is_dir() else 0.0
    limit = os.environ.get("CUDA_CACHE_MAXSIZE", "the driver's default, 256 MB")
    origin = "CUDA_CACHE_PATH" if "CUDA_CACHE_PATH" in os.environ else "CUDA_CACHE_PATH unset"
    return Finding(
        "CUDA cache",
        f"{folder} ({origin}): {size:.1f} MB, at most {limit}; driver {driver_version()}",
    )


def store_finding(settings: Settings) -> Finding:
    try:
        check_stores(settings)
    except BadInput as error:
        return Finding("Stores", str(error), missing=True)
    return Finding(
        "Stores",
        f"{settings.store_url} and {settings.resolved_data_url} reachable; the model store "
        "honours conditional writes",
    )


def cache_volume_finding(settings: Settings) -> Finding:
    folder = settings.cache_dir.resolve()
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    free = shutil.disk_usage(existing).free
    return Finding(
        "Cache volume",
        f"{folder}: {free / 1024**3:.1f} GiB free",
        missing=free < MIN_FREE_CACHE_BYTES,
    )


def allocator_finding(maps: str | None) -> Finding:
    """The malloc this process runs on, from its memory map (`/proc/self/maps`; None off Linux).
    Under glibc's, tf.data's threads fragment the heap and a run's peak memory grows with the
    images it streams (bench.memory); the image preloads tcmalloc."""
    if maps is None:
        return Finding("Memory allocator", "the system's own (not Linux)")
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return Finding(
                "Memory allocator", f"{name}: peak memory grows little with the data (bench.memory)"
            )
    return Finding(
        "Memory allocator",
        "glibc's malloc: a run's peak memory grows with the images it streams; preload tcmalloc "
        f"as the image does (apt-get install libtcmalloc-minimal4, LD_PRELOAD={TCMALLOC})",
    )


def examine_node(settings: Settings) -> list[Finding]:
    """Every finding, in the order a person checks a node."""
    built_for, build = tensorflow_build()
    findings = [build, *gpu_findings(gpus_seen(), built_for, settings)]
    findings.append(cuda_cache_finding())
    findings.append(store_finding(settings))
    findings.append(cache_volume_finding(settings))
    findings.append(Finding("CPU cores", f"{os.cpu_count()} (they decode and feed the images)"))
    maps = Path("/proc/self/maps")
    findings.append(allocator_finding(maps.read_text() if maps.exists() else None))
    return findings


def configured_model(settings: Settings) -> keras.Model:
    """The model a night trains, compiled, under the current precision policy; a backbone with
    random weights (speed does not depend on them, and nothing is downloaded)."""
    from retrainer.data.image import input_shape
    from retrainer.models import (
        build_from_factory,
        build_transfer_model,
        compile_model,
        with_augmentation,
    )
    from retrainer.records import PreparationSpec

    config = settings.training_config()
    shape = input_shape(PreparationSpec.of(settings))
    own_compile = None
    if config.backbone == "none":
        built = build_from_factory(config.model_factory, shape, 10, config)
        base, own_compile = built.model, built.own_compile
    else:
        base = build_transfer_model(config.backbone, None, shape, num_classes=10)
    model = with_augmentation(base, config)
    compile_model(model, config.learning_rate, config, own_compile)
    return model


def images_per_second(model: keras.Model, batch: int, steps: int = 30) -> float:
    """Images per second of `fit` on random images, after one warm-up call (tracing and
    compiling are not counted)."""
    import numpy as np

    shape = model.input_shape[1:]
    images = np.random.default_rng(0).random((batch * steps, *shape), dtype=np.float32)
    labels = np.arange(batch * steps) % 10
    model.fit(images[:batch], labels[:batch], batch_size=batch, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(images, labels, batch_size=batch, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - started)


def phase_speeds(settings: Settings, precision: str) -> dict[str, float]:
    """Training images/s of each phase of a night in this precision: "training" for a model
    trained in one phase; a backbone's "frozen" phase and, when it is fine-tuned, "fine-tuning"."""
    import keras

    from retrainer.models import start_fine_tuning

    config = settings.training_config()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = configured_model(settings)
        if config.backbone == "none":
            return {"training": images_per_second(model, config.batch_size)}
        speeds = {"frozen": images_per_second(model, config.batch_size)}
        if config.fine_tune_epochs:
            start_fine_tuning(model, config)
            speeds["fine-tuning"] = images_per_second(model, config.batch_size)
        return speeds
    finally:
        keras.mixed_precision.set_global_policy("float32")


def input_finding(settings: Settings) -> Finding:
    """The input pipeline on this node's cores: the demo digits, prepared at the configured image
    size in a scratch folder, handed to `fit` streamed from the shards and held in memory."""
    from retrainer.data.inputs import input_rate
    from retrainer.data.local import split_here
    from retrainer.demo import seed_demo_data

    with tempfile.TemporaryDirectory() as scratch:
        store = Path(scratch) / "store"
        seed_demo_data(LocalStore(store), DEMO_DATA)
        split = split_here(
            str(store / DEMO_DATA), str(store), Path(scratch) / "work", settings.training_config()
        )
        streamed = input_rate(split, "train", held=False)
        held = input_rate(split, "train", held=True)
    return Finding(
        "Input images/s",
        f"{streamed:,.0f} streamed from the shards, {held:,.0f} held in memory, on "
        f"{os.cpu_count()} cores ({settings.image_size} px, batch {settings.batch_size}, no model)",
    )


def precision_finding(settings: Settings, speeds: dict[str, dict[str, float]]) -> Finding:
    """What the measured `speeds` (images/s by precision, then by phase) say: the precision that
    makes a night shorter, over the epochs of each of its phases."""
    epochs = {
        "training": settings.epochs,
        "frozen": settings.epochs,
        "fine-tuning": settings.fine_tune_epochs,
    }

    def seconds_per_image(precision: str) -> float:
        return sum(epochs[phase] / speed for phase, speed in speeds[precision].items())

    faster = min(speeds, key=seconds_per_image)
    phases = [
        ("" if phase == "training" else f"{phase}: ")
        + ", ".join(f"{precision} {by_phase[phase]:,.0f}" for precision, by_phase in speeds.items())
        for phase in speeds[faster]
    ]
    model = settings.backbone if settings.backbone != "none" else "the configured model"
    over = "" if len(phases) == 1 else " over a night's epochs of each phase"
    advice = "off" if faster == "float32" else "on"
    return Finding(
        "Training images/s",
        f"{'; '.join(phases)} ({model}, batch {settings.batch_size}, {settings.image_size} px): "
        f"{faster} is faster here{over}; RETRAINER_MIXED_PRECISION={advice} makes it the choice",
    )


def benchmark_findings(settings: Settings, gpus: list[GpuSeen]) -> list[Finding]:
    """float32 against the mixed precision this node's GPUs would use, measured for each phase of
    a night; and what the input pipeline hands `fit` here."""
    capabilities = [gpu.capability or (0, 0) for gpu in gpus]
    mixed = "mixed_float16" if capabilities and min(capabilities) < (8, 0) else "mixed_bfloat16"
    speeds = {precision: phase_speeds(settings, precision) for precision in ("float32", mixed)}
    return [precision_finding(settings, speeds), input_finding(settings)]
