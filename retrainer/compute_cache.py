"""The CUDA compute cache, kept in the store: only the first night on a new kind of GPU compiles.

On a GPU TensorFlow has PTX but no machine code for (Hopper, with TensorFlow 2.21's wheels), the
driver compiles every kernel when it is first used and keeps the result in its compute cache
(CUDA_CACHE_PATH). A fresh pod starts with an empty cache and would compile again every night,
so a copy is kept in the store per kind of GPU, driver and TensorFlow version (compiled kernels
are valid for exactly those), restored before training and saved after it when it grew. The
cache is an optimisation: a store that cannot give or take it costs time, never the run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrainer.layout import cuda_cache_key
from retrainer.storage import ObjectNotFound, ObjectStore

logger = logging.getLogger(__name__)

# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03  ...": the host's driver, which a
# container sees through the host kernel's /proc.
DRIVER_VERSION = re.compile(r"Kernel Module\s+(?P<version>[\d.]+)")


def cuda_cache_folder() -> Path:
    """Where the driver keeps compiled kernels: CUDA_CACHE_PATH, else its default."""
    where = os.environ.get("CUDA_CACHE_PATH")
    return Path(where) if where else Path.home() / ".nv" / "ComputeCache"


def driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str:
    try:
        match = DRIVER_VERSION.search(proc_file.read_text())
    except OSError:
        return "unknown"
    return match["version"] if match else "unknown"


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


def restore_cuda_cache(store: ObjectStore, key: str, folder: Path) -> bool:
    """Unpack the stored cache into `folder`; False when the store has none or it cannot be used
    (an outage, a damaged archive): the driver then compiles, as on the first night."""
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "cache.tar.gz"
        try:
            store.download(key, archive)
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as packed:
                packed.extractall(folder, filter="data")  # no path leaves the folder
        except ObjectNotFound:
            return False
        except Exception as error:  # an optimisation: whatever went wrong costs time, not the run
            logger.warning("The CUDA compute cache could not be restored (%s): compiling", error)
            return False
    return True


def save_cuda_cache(store: ObjectStore, key: str, folder: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "cache.tar.gz"
        try:
            with tarfile.open(archive, "w:gz") as packed:
                packed.add(folder, arcname=".")
            store.upload(key, archive)
        except Exception as error:  # an optimisation: the next night compiles again, that is all
            logger.warning("The CUDA compute cache could not be kept in the store: %s", error)
            return
    logger.info("Kept the CUDA compute cache in the store at %s", store.describe(key))


@contextmanager
def kept_cuda_cache(store: ObjectStore, gpu: str | None) -> Iterator[None]:
    """Around training on a GPU whose kernels come from PTX (`gpu`, else nothing is done)."""
    if gpu is None:
        yield
        return
    tensorflow = importlib.metadata.version("tensorflow")
    folder = cuda_cache_folder()
    key = cuda_cache_key(gpu, driver_version(), tensorflow)
    if restore_cuda_cache(store, key, folder):
        logger.info(
            "Restored the CUDA compute cache for %s (%.0f MB): its kernels need no compiling",
            gpu,
            folder_bytes(folder) / 1e6,
        )
    else:
        logger.info(
            "No CUDA compute cache in the store for %s with this driver and TensorFlow %s: the "
            "driver compiles the kernels now, this once",
            gpu,
            tensorflow,
        )
    before = folder_bytes(folder) if folder.is_dir() else 0
    try:
        yield
    finally:
        if folder.is_dir() and folder_bytes(folder) > before:
            save_cuda_cache(store, key, folder)
