"""The worker's local disk: an accelerator only. Every fact lives in the store; this is a copy.

Layout under RETRAINER_CACHE_DIR, and how long each part lives:

    shards/<sha256>.tfrecord       prepared shards (decoded, resized images), named by their
                                   content, so a warm worker downloads only new ones; kept
                                   (`retrainer gc` removes those unused for a day)
    champions/<version>/           champion models, each checked against its manifest's sha256
                                   before use; kept (`retrainer gc` removes all but the champion's)
    backbones/<version>/<name>     pretrained backbone weights (RETRAINER_BACKBONE_WEIGHTS), one
                                   folder per URL and ETag; kept (a few MB each)
    checkpoints/<model>/<work key>/  Keras' backup of unfinished work; removed when the work is
                                   published (the store keeps its own copy until then)
    runs/<run id>/                 one run's listing, index copy, split, model, plots and logs;
                                   removed when the run ends, or by `retrainer gc` after a crash

Each run writes only under its own `runs/<run id>/`, and the model's lease keeps two runs of one
model apart, so nothing a live run uses is deleted by another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalCache:
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

    def checkpoint_dir(self, model_name: str, work_key: str) -> Path:
        return self.root / "checkpoints" / model_name / work_key[:32]

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id
