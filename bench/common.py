"""Shared by the benchmarks: real small images, a loopback S3 server, peak memory."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from retrainer.doctor import TCMALLOC
from retrainer.storage import LocalStore


def jpeg_images(count: int, classes: int, size: int) -> dict[str, bytes]:
    """`count` JPEG files `<class>/<n>.jpg`: the demo digits, upscaled, with a little noise so
    no two files are the same."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    files = {}
    for index in range(count):
        label = index % classes
        source = digits.images[digits.target == label][index // classes % 150]
        pixels = np.kron(source * (255 / 16), np.ones((size // 8, size // 8)))
        pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=85)
        files[f"{label}/{index:06d}.jpg"] = buffer.getvalue()
    return files


def distinct_images(count: int, size: int) -> dict[str, bytes]:
    """`count` different JPEG images (smooth random shapes), in 5 class folders: as many as wanted,
    no two the same photograph, nothing a model could learn (for speed and memory only)."""
    rng = np.random.default_rng(size)
    files = {}
    for index in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        files[f"{index % 5}/{index:06d}.jpg"] = buffer.getvalue()
    return files


def write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    store = LocalStore(folder)
    for key, data in files.items():
        store.put(key, data)
    return folder


def start_s3_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return process, endpoint


def peak_rss_mb() -> float:
    """Peak resident memory of this process, from the kernel's own count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def prepare_split(work: Path, count: int, size: int = 64, batch_size: int = 32):
    """The project's own stages, from image files to the DataSplit record training reads."""
    from retrainer.data.local import split_here
    from retrainer.settings import TrainingConfig

    source = write_tree(work / "images", jpeg_images(count, classes=5, size=size))
    config = TrainingConfig(image_size=size, batch_size=batch_size)
    return split_here(str(source), str(work / "store"), work / "work", config, 5, 0.0)


def in_memory_dataset(split, subset: str):
    """The same images decoded once into memory: the fastest way to feed `fit`, the baseline."""
    import numpy as np
    import tensorflow as tf

    from retrainer.data.inputs import input_fn

    images, labels = zip(
        *((x.numpy(), y.numpy()) for x, y in input_fn(split, subset, shuffle=False)), strict=True
    )
    x, y = np.concatenate(images), np.concatenate(labels)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0)
    return dataset.batch(split.batch_size).prefetch(tf.data.AUTOTUNE), len(x)


class EpochTimer:
    """Seconds per epoch, as a Keras callback."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return _Timer()


def child_figures(module: str, arguments: list[str], tcmalloc: bool, tag: str) -> list[float]:
    """Run `python -m <module> --child <arguments>` in a fresh process, on tcmalloc (preloaded,
    as in the image) or on glibc's malloc; the numbers on its output line that starts with `tag`."""
    environment = dict(os.environ, LD_PRELOAD=str(TCMALLOC)) if tcmalloc else os.environ
    answer = subprocess.run(
        [sys.executable, "-m", module, "--child", *arguments],
        capture_output=True,
        text=True,
        env=environment,
    )
    if answer.returncode != 0:
        raise RuntimeError(answer.stderr[-3000:])
    line = next(line for line in answer.stdout.splitlines() if line.startswith(tag))
    return [float(figure) for figure in line.split()[1:]]
