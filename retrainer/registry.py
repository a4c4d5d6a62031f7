"""The model registry: published versions in the store and the champion pointer naming one.

Layout under the store root:

    models/<name>/versions/<version>/model.keras, history.json, metrics.json, decision.json,
                                      manifest.json, ...
    models/<name>/champion.json       written last, and only for a version whose files are all there
    models/<name>/works/<work key>.json   how the last training of that exact work ended
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from retrainer.errors import BadInput, RegistryCorrupt
from retrainer.records import ChampionRecord, Manifest, WorkRecord
from retrainer.storage import ObjectNotFound, ObjectStore, sha256_of_file

CHAMPION_HISTORY_LENGTH = 10


class PromotionConflict(RuntimeError):
    """Another run moved the champion pointer between our read and our write."""


class ModelIntegrityError(RuntimeError):
    """A downloaded model file does not match the sha256 its manifest recorded."""


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

    def work_record_key(self, work_key: str) -> str:
        return f"{self.root}/works/{work_key}.json"

    def read_champion(self) -> tuple[Champion | None, str | None]:
        """The champion and the ETag to pass to `promote` (None, None before the first one).

        An unreadable champion.json raises RegistryCorrupt: guessing would let a worse model in.
        """
        info = self.store.head(self.champion_key)
        if info is None:
            return None, None
        try:
            raw = self.store.get(self.champion_key)
        except ObjectNotFound:
            return None, None
        try:
            return Champion.model_validate_json(raw), info.etag
        except ValidationError as error:
            raise RegistryCorrupt(
                f"{self.store.describe(self.champion_key)} is unreadable "
                f"({error.error_count()} problem(s), first: {error.errors()[0]['msg']}); "
                "repair it with `retrainer promote VERSION --repair --reason ...` or "
                "`retrainer rollback --repair --reason ...`"
            ) from None

    def manifest(self, version: str) -> Manifest:
        key = self.file_key(version, "manifest.json")
        try:
            return Manifest.model_validate_json(self.store.get(key))
        except ValidationError as error:
            raise RegistryCorrupt(
                f"{self.store.describe(key)} is not a valid manifest: {error.errors()[0]['msg']}"
            ) from None

    def read_champion_record(self) -> ChampionRecord | None:
        """The champion, its classes, work key and model hash, in one record (None: no champion)."""
        champion, etag = self.read_champion()
        if champion is None or etag is None:
            return None
        try:
            manifest = self.manifest(champion.version)
        except ObjectNotFound:
            raise RegistryCorrupt(
                f"champion {champion.version} of '{self.model_name}' has no manifest: run "
                "`retrainer verify`, then promote or roll back with --repair"
            ) from None
        if "model.keras" not in manifest.files:
            raise RegistryCorrupt(f"the manifest of champion {champion.version} lists no model")
        return ChampionRecord(
            version=champion.version,
            etag=etag,
            class_names=manifest.class_names,
            work_key=manifest.work_key,
            model_key=self.file_key(champion.version, "model.keras"),
            model_sha256=manifest.files["model.keras"].sha256,
            test_fraction=manifest.parameters.get("test_fraction"),
        )

    def promote(
        self,
        version: str,
        run_id: str,
        reason: str,
        expected_etag: str | None,
        repair: bool = False,
    ) -> Champion:
        """Point champion.json at `version`, unless someone else moved it since `expected_etag`.

        `repair` replaces an unreadable champion.json (its history is lost), still by
        compare-and-swap on the ETag of the unreadable object.
        """
        if not self.store.exists(self.file_key(version, "manifest.json")):
            raise BadInput(f"version {version} of '{self.model_name}' is not fully published")
        previous: list[ChampionEntry] = []
        try:
            current, current_etag = self.read_champion()
        except RegistryCorrupt:
            if not repair:
                raise
            current, current_etag = None, self._etag_of(self.champion_key)
            expected_etag = current_etag
        if current is not None and (current.version, current.run_id) == (version, run_id):
            self.lay_out_for_serving(current)  # the retry finishes what the first try began
            return current  # a retry of a promotion that already happened
        if current_etag != expected_etag:
            raise self._conflict(version)
        if current is not None:
            entry = ChampionEntry(**current.model_dump(include=set(ChampionEntry.model_fields)))
            previous = [entry, *current.previous][:CHAMPION_HISTORY_LENGTH]
        return self._write_champion(version, run_id, reason, previous, expected_etag)

    def rollback(self, run_id: str, reason: str, repair: bool = False) -> Champion:
        """Make the previous champion the champion again; its successor leaves the history.

        With `repair` and an unreadable champion.json, the newest version that passed its gate and
        whose files match their manifest becomes champion.
        """
        try:
            current, etag = self.read_champion()
        except RegistryCorrupt:
            if not repair:
                raise
            target = self.last_good_version()
            return self._write_champion(
                target,
                run_id,
                f"repair: champion.json was unreadable; {reason}",
                [],
                self._etag_of(self.champion_key),
            )
        if current is None or not current.previous:
            raise BadInput(f"'{self.model_name}' has no previous champion to roll back to")
        target_entry, *older = current.previous
        return self._write_champion(
            target_entry.version,
            run_id,
            f"rollback from {current.version}: {reason}",
            older,
            etag,
        )

    def last_good_version(self) -> str:
        """The newest version whose gate passed and whose files all match its manifest."""
        for summary in reversed(self.list_versions()):
            if summary.passed and not self.verify_version(summary.version):
                return summary.version
        raise BadInput(f"'{self.model_name}' has no version that passed its gate and verifies")

    def _etag_of(self, key: str) -> str | None:
        info = self.store.head(key)
        return info.etag if info else None

    def _conflict(self, version: str) -> PromotionConflict:
        return PromotionConflict(
            f"champion of '{self.model_name}' was changed by another run in the meantime; "
            f"version {version} stays published but unpromoted"
        )

    def _write_champion(
        self,
        version: str,
        run_id: str,
        reason: str,
        previous: list[ChampionEntry],
        expected_etag: str | None,
    ) -> Champion:
        """Compare-and-swap, then read back: the outcome is what champion.json finally holds.

        A write whose answer was lost can land after its retry was refused, and a store can answer
        409 for a write it then applies, so "promoted" is said only after reading it back.
        """
        champion = Champion(
            model_name=self.model_name,
            version=version,
            promoted_at=datetime.now(UTC),
            run_id=run_id,
            reason=reason,
            previous=previous,
        )
        body = champion.model_dump_json(indent=2).encode()
        self.store.put_if(self.champion_key, body, expected_etag)
        written, _ = self.read_champion()
        if written is None or (written.version, written.run_id) != (version, run_id):
            raise self._conflict(version)
        if [entry.version for entry in written.previous[:1]] != [e.version for e in previous[:1]]:
            raise PromotionConflict(
                f"champion.json of '{self.model_name}' names {version} but not the champion it "
                "replaced; run `retrainer verify`"
            )
        self.lay_out_for_serving(written)
        return written

    @property
    def serving_prefix(self) -> str:
        """TensorFlow Serving's base path for this model: `serving/<model>/<integer version>/`."""
        return f"serving/{self.model_name}"

    def serving_location(self, champion: Champion) -> str:
        """`serving/<model>/<n>/`, n the promotion time in microseconds since 1970: it grows with
        every promotion and rollback, and TF Serving serves the highest."""
        microseconds = round(champion.promoted_at.timestamp() * 1_000_000)
        return f"{self.serving_prefix}/{microseconds}"

    def lay_out_for_serving(self, champion: Champion) -> None:
        """Copy the champion's SavedModel where TensorFlow Serving looks (none for versions
        from before the export).

        Every file is checked against the manifest, and `saved_model.pb` goes last: TF Serving
        takes a folder without it for unfinished.
        """
        manifest = self.manifest(champion.version)
        if manifest.serving is None:
            return
        source = f"{manifest.serving.directory}/"
        names = sorted(
            (name for name in manifest.files if name.startswith(source)),
            key=lambda name: (name.endswith("/saved_model.pb"), name),
        )
        target = self.serving_location(champion)
        for name in names:
            data = self.store.get(self.file_key(champion.version, name))
            if hashlib.sha256(data).hexdigest() != manifest.files[name].sha256:
                raise ModelIntegrityError(
                    f"{self.store.describe(self.file_key(champion.version, name))} does not "
                    "match its manifest: not laid out for serving; run `retrainer verify`"
                )
            self.store.put(f"{target}/{name[len(source) :]}", data)

    def read_json(self, version: str, filename: str) -> dict[str, object]:
        data = json.loads(self.store.get(self.file_key(version, filename)))
        assert isinstance(data, dict)
        return data

    def read_optional_json(self, version: str, filename: str) -> dict[str, object]:
        """The file's JSON object, or {} when it is missing or unreadable (for listings only)."""
        try:
            return self.read_json(version, filename)
        except (ObjectNotFound, ValueError, AssertionError):
            return {}

    def published_versions(self) -> list[str]:
        """Every version with a manifest (fully published), oldest first."""
        prefix = f"{self.root}/versions/"
        return sorted(
            {
                info.key[len(prefix) :].split("/", 1)[0]
                for info in self.store.list(prefix)
                if info.key.endswith("/manifest.json")
            }
        )

    def list_versions(self) -> list[VersionSummary]:
        """Every version with a manifest (fully published), oldest first."""
        try:
            champion, _ = self.read_champion()
        except RegistryCorrupt:
            champion = None
        summaries = []
        for version in self.published_versions():
            metrics = self.read_optional_json(version, "metrics.json")
            decision = self.read_optional_json(version, "decision.json")
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

    def verify_version(self, version: str) -> list[str]:
        """One line per problem with the version's manifest or files; empty when all is well."""
        try:
            manifest = self.manifest(version)
        except (ObjectNotFound, RegistryCorrupt, json.JSONDecodeError) as error:
            return [f"{version}: manifest unreadable or missing ({error})"]
        problems = []
        for name, entry in sorted(manifest.files.items()):
            try:
                data = self.store.get(self.file_key(version, name))
            except ObjectNotFound:
                problems.append(f"{version}/{name}: missing")
                continue
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                problems.append(f"{version}/{name}: sha256 differs from the manifest's")
        return problems

    def download_champion_model(self, champion: ChampionRecord, models_dir: Path) -> Path:
        """The champion's model file in `models_dir`, fetched once per machine and checked.

        A copy that does not match the manifest's sha256 is fetched again; a download that still
        does not match raises ModelIntegrityError and is never loaded.
        """
        path = models_dir / champion.version / "model.keras"
        return self.download_checked(champion.model_key, champion.model_sha256, path)

    def download_checked(self, key: str, sha256: str, destination: Path) -> Path:
        """A version's file at `destination`: fetched unless a matching copy is there, and
        checked against the sha256 of its manifest."""
        if destination.is_file() and sha256_of_file(destination) == sha256:
            return destination
        self.store.download(key, destination)
        if sha256_of_file(destination) != sha256:
            destination.unlink()
            raise ModelIntegrityError(
                f"{self.store.describe(key)} does not match the sha256 in its manifest; run "
                "`retrainer verify`"
            )
        return destination

    def read_work_record(self, work_key: str) -> WorkRecord | None:
        try:
            return WorkRecord.model_validate_json(self.store.get(self.work_record_key(work_key)))
        except ObjectNotFound:
            return None
        except ValidationError:
            return None  # a record we cannot read only costs a retraining

    def write_work_record(self, record: WorkRecord) -> None:
        self.store.put(self.work_record_key(record.work_key), record.model_dump_json().encode())
