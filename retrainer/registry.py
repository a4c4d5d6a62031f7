"""The model registry: published versions in the store and the champion pointer naming one.

Layout under the store root:

    models/<name>/versions/<version>/model.keras, history.json, metrics.json, decision.json,
                                      manifest.json, ...
    models/<name>/champion.json       written last, and only for a version whose files are all there
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from retrainer.storage import ObjectNotFound, ObjectStore, sha256_of_file

CHAMPION_HISTORY_LENGTH = 10


class PromotionConflict(RuntimeError):
    """Another run moved the champion pointer between our read and our write."""


class ChampionEntry(BaseModel):
    version: str
    promoted_at: datetime
    run_id: str
    reason: str


class Champion(ChampionEntry):
    model_name: str
    previous: list[ChampionEntry] = Field(default_factory=list)


class VersionSummary(BaseModel):
    version: str
    metrics: dict[str, float] = Field(default_factory=dict)
    passed: bool | None = None
    reason: str = ""
    is_champion: bool = False


def version_id(finished_at: datetime, run_id: str) -> str:
    """Sortable by time, unique per run, and the same on a retry of the same publication."""
    suffix = hashlib.sha256(f"{run_id}/{finished_at.isoformat()}".encode()).hexdigest()[:6]
    return f"{finished_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


class ModelRegistry:
    def __init__(self, store: ObjectStore, model_name: str) -> None:
        self.store = store
        self.model_name = model_name
        self.root = f"models/{model_name}"
        self.champion_key = f"{self.root}/champion.json"

    def version_prefix(self, version: str) -> str:
        return f"{self.root}/versions/{version}/"

    def file_key(self, version: str, filename: str) -> str:
        return self.version_prefix(version) + filename

    def read_champion(self) -> tuple[Champion | None, str | None]:
        """The champion and the ETag to pass to `promote` (None, None before the first one)."""
        info = self.store.head(self.champion_key)
        if info is None:
            return None, None
        try:
            raw = self.store.get(self.champion_key)
        except ObjectNotFound:
            return None, None
        return Champion.model_validate_json(raw), info.etag

    def promote(
        self, version: str, run_id: str, reason: str, expected_etag: str | None
    ) -> Champion:
        """Point champion.json at `version`, unless someone else moved it since `expected_etag`."""
        if not self.store.exists(self.file_key(version, "manifest.json")):
            raise ValueError(f"version {version} of '{self.model_name}' is not fully published")
        current, _ = self.read_champion()
        if current is not None and (current.version, current.run_id) == (version, run_id):
            return current  # a retry of a promotion that already happened
        previous: list[ChampionEntry] = []
        if current is not None:
            entry = ChampionEntry(**current.model_dump(include=set(ChampionEntry.model_fields)))
            previous = [entry, *current.previous][:CHAMPION_HISTORY_LENGTH]
        return self._write_champion(version, run_id, reason, previous, expected_etag)

    def rollback(self, run_id: str, reason: str) -> Champion:
        """Make the previous champion the champion again; its successor leaves the history."""
        current, etag = self.read_champion()
        if current is None or not current.previous:
            raise ValueError(f"'{self.model_name}' has no previous champion to roll back to")
        target, *older = current.previous
        return self._write_champion(
            target.version, run_id, f"rollback from {current.version}: {reason}", older, etag
        )

    def _write_champion(
        self,
        version: str,
        run_id: str,
        reason: str,
        previous: list[ChampionEntry],
        expected_etag: str | None,
    ) -> Champion:
        champion = Champion(
            model_name=self.model_name,
            version=version,
            promoted_at=datetime.now(UTC),
            run_id=run_id,
            reason=reason,
            previous=previous,
        )
        body = champion.model_dump_json(indent=2).encode()
        if not self.store.put_if(self.champion_key, body, expected_etag):
            raise PromotionConflict(
                f"champion of '{self.model_name}' was changed by another run in the meantime; "
                f"version {version} stays published but unpromoted"
            )
        return champion

    def classes_of(self, version: str) -> list[str] | None:
        """The class names a version was trained on, as its manifest records them."""
        classes = self.read_json(version, "manifest.json").get("class_names")
        return [str(name) for name in classes] if isinstance(classes, list) else None

    def champion_classes(self) -> list[str] | None:
        """The class names the champion was trained on, or None when there is no champion."""
        champion, _ = self.read_champion()
        return None if champion is None else self.classes_of(champion.version)

    def read_json(self, version: str, filename: str) -> dict[str, object]:
        data = json.loads(self.store.get(self.file_key(version, filename)))
        assert isinstance(data, dict)
        return data

    def list_versions(self) -> list[VersionSummary]:
        """Every version with a manifest (fully published), oldest first."""
        prefix = f"{self.root}/versions/"
        versions = sorted(
            {
                info.key[len(prefix) :].split("/", 1)[0]
                for info in self.store.list(prefix)
                if info.key.endswith("/manifest.json")
            }
        )
        champion, _ = self.read_champion()
        summaries = []
        for version in versions:
            metrics = self.read_json(version, "metrics.json")
            try:
                decision = self.read_json(version, "decision.json")
            except ObjectNotFound:
                decision = {}
            summaries.append(
                VersionSummary(
                    version=version,
                    metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                    passed=decision.get("passed"),
                    reason=str(decision.get("reason", "")),
                    is_champion=champion is not None and champion.version == version,
                )
            )
        return summaries

    def download_model(self, version: str, models_dir: Path) -> Path:
        """The version's model file in `models_dir`, fetched once: warm start and gate share it.

        A copy whose sha256 differs from the manifest's is fetched again.
        """
        path = models_dir / version / "model.keras"
        files = self.read_json(version, "manifest.json").get("files", {})
        recorded = files.get("model.keras", {}) if isinstance(files, dict) else {}
        if not (path.is_file() and sha256_of_file(path) == recorded.get("sha256")):
            self.store.download(self.file_key(version, "model.keras"), path)
        return path
