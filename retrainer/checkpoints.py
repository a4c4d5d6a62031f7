"""Checkpoints that outlive the worker: Keras' backup folder, sealed, and mirrored to the store.

After each finished epoch the files Keras backed up are hashed into a seal beside them, uploaded
to `checkpoints/<model>/<work key>/epoch-<n>/`, and then a pointer `latest.json` names the folder
and the hashes: a reader never finds half an epoch. A kill can strike anywhere (while Keras
rewrites its weights file, mid-upload): a local copy that does not match its seal is discarded for
the store's copy, and a pointer whose files are missing or damaged counts as no checkpoint. The
work key changes with the data, the parameters and the code, so only a rerun of the very same work
resumes from it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import BaseModel, ValidationError

from retrainer.layout import LocalCache, ModelKeys
from retrainer.storage import ObjectNotFound, ObjectStore, sha256_of_file, write_atomically

logger = logging.getLogger(__name__)

# What Keras' BackupAndRestore writes, plus our own history of every finished epoch.
METADATA_FILE = "training_metadata.json"
CHECKPOINT_FILES = ("latest.weights.h5", METADATA_FILE, "history.json")
SEAL_FILE = "seal.json"


class Seal(BaseModel):
    """A finished epoch's checkpoint: the folder in the store and every file's sha256."""

    folder: str
    epoch: int
    files: dict[str, str]


class CheckpointMirror:
    def __init__(self, store: ObjectStore, prefix: str, local_dir: Path) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/") + "/"
        self.local_dir = local_dir
        self.pointer_key = self.prefix + "latest.json"

    def _local_hashes(self) -> dict[str, str]:
        return {name: sha256_of_file(self.local_dir / name) for name in CHECKPOINT_FILES}

    def _sealed_local_epoch(self) -> int:
        """The epoch of an intact local checkpoint; 0 when there is none or it is torn."""
        try:
            seal = Seal.model_validate_json((self.local_dir / SEAL_FILE).read_text())
            intact = self._local_hashes() == seal.files
        except (OSError, ValidationError):
            return 0
        return seal.epoch if intact else 0

    def restore(self) -> int:
        """Bring back the last finished epoch, local first, else from the store; 0 if none."""
        if epoch := self._sealed_local_epoch():
            logger.info("Found a local checkpoint after epoch %d in %s", epoch, self.local_dir)
            return epoch
        if self.local_dir.exists() and any(self.local_dir.iterdir()):
            logger.warning("Discarded a torn local checkpoint in %s", self.local_dir)
        self._clear_local()
        try:
            seal = Seal.model_validate_json(self.store.get(self.pointer_key))
        except ObjectNotFound:
            return 0
        except ValidationError:
            logger.warning("Ignored an unreadable checkpoint pointer %s", self.pointer_key)
            return 0
        folder = self.prefix + seal.folder
        try:
            for name in CHECKPOINT_FILES:
                self.store.download(f"{folder}/{name}", self.local_dir / name)
        except ObjectNotFound as missing:
            logger.warning(
                "The checkpoint pointer names a missing file (%s): starting over", missing
            )
            self._clear_local()
            return 0
        if self._local_hashes() != seal.files:
            logger.warning(
                "The checkpoint in %s is damaged: starting over", self.store.describe(folder)
            )
            self._clear_local()
            return 0
        write_atomically(self.local_dir / SEAL_FILE, seal.model_dump_json().encode())
        logger.info(
            "Restored the checkpoint after epoch %d from %s",
            seal.epoch,
            self.store.describe(folder),
        )
        return seal.epoch

    def save(self, epoch: int) -> None:
        """Seal the local checkpoint of `epoch`, upload it, point at it, drop the previous one."""
        seal = Seal(folder=f"epoch-{epoch:05d}", epoch=epoch, files=self._local_hashes())
        write_atomically(self.local_dir / SEAL_FILE, seal.model_dump_json().encode())
        for name in CHECKPOINT_FILES:
            self.store.upload(f"{self.prefix}{seal.folder}/{name}", self.local_dir / name)
        previous = self._pointed_folder()
        self.store.put(self.pointer_key, seal.model_dump_json().encode())
        if previous and previous != seal.folder:
            for name in CHECKPOINT_FILES:
                self.store.delete(f"{self.prefix}{previous}/{name}")

    def clear(self) -> None:
        """The work is finished: remove its checkpoints here and in the store."""
        self._clear_local()
        for info in list(self.store.list(self.prefix)):
            self.store.delete(info.key)

    def _clear_local(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)
        self.local_dir.mkdir(parents=True, exist_ok=True)

    def _pointed_folder(self) -> str | None:
        try:
            return Seal.model_validate_json(self.store.get(self.pointer_key)).folder
        except (ObjectNotFound, ValidationError):
            return None


def checkpoint_mirror(
    store: ObjectStore, cache_root: Path, model_name: str, key: str
) -> CheckpointMirror:
    return CheckpointMirror(
        store,
        ModelKeys(model_name).checkpoint(key),
        LocalCache(cache_root).checkpoint_dir(model_name, key),
    )
