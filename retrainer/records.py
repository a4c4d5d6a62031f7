"""The small typed records the pipeline's stages hand each other.

Heavy things (images, models) stay on disk or in the store; these records only say where they are,
so every stage can be logged, retried and tested on its own.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field


class DataSnapshot(BaseModel):
    """The data as fetched into the local cache."""

    source_url: str
    cache_dir: Path
    fingerprint: str = Field(description="sha256 over every object's key, ETag and size")
    file_count: int
    downloaded: int
    deleted: int


class QuarantinedFile(BaseModel):
    path: str
    reason: str


class ValidatedData(BaseModel):
    """Images that decode, grouped by class, and the files set aside."""

    snapshot: DataSnapshot
    class_names: list[str]
    images_per_class: dict[str, int]
    index_path: Path = Field(description="JSON list of [relative path, class index] pairs")
    quarantined: list[QuarantinedFile] = Field(default_factory=list)


class Batches(BaseModel):
    """A train/validation split on disk and how to batch it."""

    split_path: Path
    class_names: list[str]
    image_size: int
    batch_size: int
    train_count: int
    validation_count: int
    data_fingerprint: str


class TrainedModel(BaseModel):
    model_path: Path
    history_path: Path
    metrics: dict[str, float]
    device: str
    epochs_run: int
    started_at: datetime
    finished_at: datetime
    stopped_reason: str | None = Field(None, description="why training ended early, if it did")


class GateCheck(BaseModel):
    metric: str
    value: float
    threshold: float
    rule: str
    passed: bool


class GateDecision(BaseModel):
    passed: bool
    reason: str
    checks: list[GateCheck]
    champion_version: str | None
    champion_etag: str | None = Field(None, description="champion.json as read before the gate")


class Publication(BaseModel):
    model_name: str
    version: str
    version_url: str
    files: list[str]
    promoted: bool
    champion_version: str | None
    message: str
