"""The worker's local disk: an accelerator only. Every fact lives in the store; this is a copy.

Layout under RETRAINER_CACHE_DIR, and how long each part lives:

    data/<hash of the data URL>/   fetched copies of the data and the key -> ETag manifest; kept,
                                   so a warm worker downloads only what changed; a fetch holds
                                   its lock, as models sharing the data may run at once
    work/                          validation verdicts per object ETag; kept (re-derived if lost)
    champions/<version>/           champion models, each checked against its manifest's sha256
                                   before use; kept (`retrainer gc` removes all but the champion's)
    checkpoints/<model>/<work key>/  Keras' backup of unfinished work; removed when the work is
                                   published (the store keeps its own copy until then)
    runs/<run id>/                 one run's split, decoded-image caches, model, plots and logs;
                                   removed when the run ends, or by `retrainer gc` after a crash

Each run writes only under its own `runs/<run id>/`, and the model's lease keeps two runs of one
model apart, so nothing a live run uses is deleted by another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalCache:
    root: Path

    def data_dir(self, source_url: str) -> Path:
        """One folder per data URL, so two datasets never mix."""
        return self.root / "data" / hashlib.sha256(source_url.encode()).hexdigest()[:16]

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def champions_dir(self) -> Path:
        return self.root / "champions"

    def checkpoint_dir(self, model_name: str, work_key: str) -> Path:
        return self.root / "checkpoints" / model_name / work_key[:32]

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id
