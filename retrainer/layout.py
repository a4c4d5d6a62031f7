"""Where everything lives: every key in the store, every file of the worker's cache and run folder.

Stage functions receive the keys and paths named here; nothing else builds one. `retrainer gc`
walks the store with the inverse methods (`version_in`, `dataset_in`, ...), and a test checks the
README's table "What a run leaves in the store" against `store_map()`.

The store (the memory of every night; the worker's disk is only a cache):

    models/<name>/...            one model: its versions, champion, history, work records
    serving/<name>/<n>/          the champion as TensorFlow Serving reads it
    leases/<name>.json           the run that holds the model now
    checkpoints/<name>/<work>/   the last finished epoch of unfinished work
    prepared/<data>/<spec>/...   a prepared dataset, shared by every model on the same data
    _retrainer/...               what the store proved about itself
    datasets/digits/...          the demo data

The worker's cache (RETRAINER_CACHE_DIR), and how long each part lives:

    shards/<sha256>.tfrecord       prepared shards, named by their content, so a warm worker
                                   downloads only new ones; kept (`retrainer gc` removes those
                                   unused for a day)
    champions/<version>/           champion models, each checked against its manifest's sha256
                                   before use; kept (`retrainer gc` removes all but the champion's)
    backbones/<version>/<name>     pretrained backbone weights (RETRAINER_BACKBONE_WEIGHTS), one
                                   folder per URL and ETag; kept (a few MB each)
    checkpoints/<model>/<work>/    Keras' backup of unfinished work; removed when the work is
                                   published (the store keeps its own copy until then)
    runs/<run id>/                 one run's files (`RunFolder`); removed when the run ends, or by
                                   `retrainer gc` after a crash

Each run writes only under its own `runs/<run id>/`, and the model's lease keeps two runs of one
model apart, so nothing a live run uses is deleted by another.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# A work key is a sha256; folders are named by its first 32 characters (shorter paths).
WORK_FOLDER_CHARS = 32

# The files of a published version, and of the run folder that produced them.
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
DECISION_FILE = "decision.json"
CURVES_PLOT = "training_curves.png"
CONFUSION_PLOT = "confusion_matrix.png"
TENSORBOARD_DIR = "tensorboard"
SAVED_MODEL_DIR = "saved_model"
MANIFEST_FILE = "manifest.json"  # written last: a version without one is not published
VERSION_FILES = (
    MODEL_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    DECISION_FILE,
    CURVES_PLOT,
    CONFUSION_PLOT,
    f"{TENSORBOARD_DIR}/",
    f"{SAVED_MODEL_DIR}/",
    MANIFEST_FILE,
)

# Under a prepared dataset's prefix.
PREPARED_INDEX = "index.json"
SHARDS = "shards/"
READERS = "readers/"

CONDITIONAL_WRITES_PROOF = "_retrainer/conditional-writes-proven.json"
CONDITIONAL_WRITES_PROBES = "_retrainer/probes/"
CUDA_CACHES = "_retrainer/cuda-cache/"
DEMO_DATA = "datasets/digits"


def work_folder(work_key: str) -> str:
    return work_key[:WORK_FOLDER_CHARS]


def first_segment(key: str, prefix: str) -> str:
    """The folder (or file) name right under `prefix` that `key` lies in."""
    return key.removeprefix(prefix).split("/", 1)[0]


def check_version_name(name: str) -> str:
    """A version is one name under `versions/`, as `retrainer models` lists it: never a path."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"'{name}' is not a version name: give one as `retrainer models` lists it")
    return name


@dataclass(frozen=True)
class ModelKeys:
    """Every key of one model in the store."""

    name: str

    @property
    def root(self) -> str:
        return f"models/{self.name}"

    @property
    def champion(self) -> str:
        return f"{self.root}/champion.json"

    @property
    def versions(self) -> str:
        return f"{self.root}/versions/"

    def version(self, version: str) -> str:
        return f"{self.versions}{check_version_name(version)}/"

    def version_file(self, version: str, filename: str) -> str:
        return self.version(version) + filename

    def version_in(self, key: str) -> str:
        return first_segment(key, self.versions)

    @property
    def works(self) -> str:
        return f"{self.root}/works/"

    def work_record(self, work_key: str) -> str:
        return f"{self.works}{work_key}.json"

    def work_in(self, key: str) -> str:
        return first_segment(key, self.works).removesuffix(".json")

    @property
    def history(self) -> str:
        return f"{self.root}/history/"

    def history_entry(self, generation: int) -> str:
        # Zero-padded, so the store lists the history in order.
        return f"{self.history}{generation:020d}.json"

    @property
    def serving(self) -> str:
        """TensorFlow Serving's base path for this model: it serves the highest number under it."""
        return f"serving/{self.name}"

    def served(self, number: int) -> str:
        return f"{self.serving}/{number}/"

    def served_number_in(self, key: str) -> str:
        return first_segment(key, f"{self.serving}/")

    @property
    def lease(self) -> str:
        return f"leases/{self.name}.json"

    @property
    def checkpoints(self) -> str:
        return f"checkpoints/{self.name}/"

    def checkpoint(self, work_key: str) -> str:
        return f"{self.checkpoints}{work_folder(work_key)}/"

    def checkpointed_work_in(self, key: str) -> str:
        """The work folder (see `work_folder`) a checkpoint key belongs to."""
        return first_segment(key, self.checkpoints)


PREPARED = "prepared/"


def prepared_dataset(source_url: str, spec_key: str) -> str:
    """The prefix of the data at `source_url`, prepared by the spec whose key is `spec_key`."""
    data = hashlib.sha256(source_url.encode()).hexdigest()[:16]
    return f"{PREPARED}{data}/{spec_key}"


def dataset_in(key: str) -> tuple[str, str]:
    """The prepared dataset a key belongs to, and its name under the dataset's prefix."""
    data, spec, name = key.removeprefix(PREPARED).split("/", 2)
    return f"{PREPARED}{data}/{spec}", name


def shard_key(shard: str) -> str:
    """A shard, under its prepared dataset's prefix."""
    return f"{SHARDS}{shard}.tfrecord"


def shard_in(key: str) -> str:
    """The shard (its sha256) a key under a prepared dataset's prefix names."""
    return key.removeprefix(SHARDS).removesuffix(".tfrecord")


def reader_key(run_id: str) -> str:
    """A run's mark that it reads the prepared dataset now, under the dataset's prefix."""
    return f"{READERS}{run_id}"


def cuda_cache_key(gpu: str, driver: str, tensorflow: str) -> str:
    """The CUDA compute cache of one kind of GPU (name and capability), driver and TensorFlow
    version: kernels compiled for one of them are not valid for another."""
    name = f"{gpu}-driver-{driver}-tensorflow-{tensorflow}".lower()
    return f"{CUDA_CACHES}{re.sub(r'[^a-z0-9.<>]+', '-', name)}.tar.gz"  # <> for store_map


def store_map() -> list[str]:
    """Every kind of key in the store, with <placeholders>: the README's table lists these."""
    model = ModelKeys("<name>")
    dataset = f"{PREPARED}<data>/<spec>/"
    return [
        *(model.version_file("<version>", name) for name in VERSION_FILES),
        model.champion,
        f"{model.history}<generation>.json",
        model.work_record("<work key>"),
        f"{model.serving}/<n>/",
        model.lease,
        CONDITIONAL_WRITES_PROOF,
        cuda_cache_key("<gpu>", "<driver>", "<tensorflow>"),
        f"{model.checkpoints}<work key>/",
        dataset + PREPARED_INDEX,
        dataset + shard_key("<sha256>"),
        dataset + reader_key("<run id>"),
        f"{DEMO_DATA}/<class>/<n>.png",
    ]


@dataclass(frozen=True)
class RunFolder:
    """One run's files on the worker: what it listed, prepared, split and trained."""

    root: Path

    @property
    def listing(self) -> Path:
        return self.root / "listing.json"

    @property
    def prepared_index(self) -> Path:
        return self.root / "prepared-index.json"

    @property
    def usable_images(self) -> Path:
        return self.root / "usable-images.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    def file(self, name: str) -> Path:
        """A file published with the version (see the version files above)."""
        return self.root / name


@dataclass(frozen=True)
class LocalCache:
    """The worker's local disk: an accelerator only. Every fact lives in the store."""

    root: Path

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def champions_dir(self) -> Path:
        return self.root / "champions"

    @property
    def backbones_dir(self) -> Path:
        return self.root / "backbones"

    def checkpoints_dir(self, model_name: str) -> Path:
        return self.root / "checkpoints" / model_name

    def checkpoint_dir(self, model_name: str, work_key: str) -> Path:
        return self.checkpoints_dir(model_name) / work_folder(work_key)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)


def shard_file(shards_dir: Path, shard: str) -> Path:
    """A worker's copy of a shard."""
    return shards_dir / f"{shard}.tfrecord"
