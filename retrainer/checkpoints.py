"""Checkpoints that outlive the worker: Keras' backup folder, mirrored to the object store.

Each finished epoch goes to `checkpoints/<model>/<work key>/epoch-<n>/`, then a pointer
`latest.json` names it: a reader never finds half an epoch. The work key changes with the data,
the parameters and the code, so only a rerun of the very same work resumes from it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from retrainer import Log
from retrainer.storage import ObjectNotFound, ObjectStore

logger = logging.getLogger(__name__)

# What Keras' BackupAndRestore writes, plus our own history of every finished epoch.
METADATA_FILE = "training_metadata.json"
CHECKPOINT_FILES = ("latest.weights.h5", METADATA_FILE, "history.json")


class CheckpointMirror:
    def __init__(self, store: ObjectStore, prefix: str, local_dir: Path) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/") + "/"
        self.local_dir = local_dir
        self.pointer_key = self.prefix + "latest.json"

    def local_epoch(self) -> int:
        try:
            return int(json.loads((self.local_dir / METADATA_FILE).read_text())["epoch"])
        except (FileNotFoundError, KeyError, ValueError):
            return 0

    def restore(self, log: Log = logger) -> int:
        """Bring back the last finished epoch, local first, else from the store; 0 if none."""
        if epoch := self.local_epoch():
            log.info("Found a local checkpoint after epoch %d in %s", epoch, self.local_dir)
            return epoch
        try:
            pointer = json.loads(self.store.get(self.pointer_key))
        except ObjectNotFound:
            return 0
        folder = self.prefix + pointer["folder"]
        for name in CHECKPOINT_FILES:
            self.store.download(f"{folder}/{name}", self.local_dir / name)
        epoch = self.local_epoch()
        log.info(
            "Restored the checkpoint after epoch %d from %s", epoch, self.store.describe(folder)
        )
        return epoch

    def save(self, epoch: int) -> None:
        """Upload the local checkpoint of `epoch`, then point at it, then drop the previous one."""
        folder = f"epoch-{epoch:05d}"
        for name in CHECKPOINT_FILES:
            self.store.upload(f"{self.prefix}{folder}/{name}", self.local_dir / name)
        previous = self._pointed_folder()
        self.store.put(self.pointer_key, json.dumps({"folder": folder, "epoch": epoch}).encode())
        if previous and previous != folder:
            for name in CHECKPOINT_FILES:
                self.store.delete(f"{self.prefix}{previous}/{name}")

    def clear(self) -> None:
        """The work is finished: remove its checkpoints here and in the store."""
        shutil.rmtree(self.local_dir, ignore_errors=True)
        for info in list(self.store.list(self.prefix)):
            self.store.delete(info.key)

    def _pointed_folder(self) -> str | None:
        try:
            return str(json.loads(self.store.get(self.pointer_key))["folder"])
        except ObjectNotFound:
            return None


def checkpoint_mirror(
    store: ObjectStore, cache_root: Path, model_name: str, key: str
) -> CheckpointMirror:
    return CheckpointMirror(
        store, f"checkpoints/{model_name}/{key[:32]}", cache_root / "checkpoints" / key[:32]
    )
