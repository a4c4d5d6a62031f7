"""The model registry: published versions in the store and the champion pointer naming one.

Its keys (`ModelKeys` in retrainer/layout.py): every version's files under
`models/<name>/versions/<version>/`; `champion.json`, written last and only for a version whose
files are all there; the history of every champion.json ever written, never rewritten; the work
records (how the last training of each exact work ended); and `serving/<name>/<generation>/`, the
champion's SavedModel where TensorFlow Serving looks.

Every change of champion (promotion, override, rollback) writes champion.json by compare-and-swap
with the next `generation`, a counter kept in champion.json itself, so it comes from the store and
never from a clock. The change is then appended to the history and the champion is laid out for
serving under that number; a kill between these steps is finished by the next run
(`make_store_match_champion`), and champion.json can be rebuilt from the history.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from retrainer.errors import BadInput, RegistryCorrupt
from retrainer.layout import MANIFEST_FILE, MODEL_FILE, ModelKeys
from retrainer.records import ChampionRecord, Manifest, WorkRecord
from retrainer.storage import ObjectNotFound, ObjectStore, sha256_of_file

CHAMPION_HISTORY_LENGTH = 10


ChampionAction = Literal["promotion", "override", "rollback"]


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
    generation: int | None = Field(
        None,
        description="counts the changes of champion; names the serving folder. None in records "
        "written before the counter, which were served under their promotion time",
    )
    action: ChampionAction = "promotion"
    previous: list[ChampionEntry] = Field(default_factory=list)

    @property
    def serving_number(self) -> int:
        """TF Serving's version number of this champion: the highest in `serving/<model>/`."""
        if self.generation is not None:
            return self.generation
        return round(self.promoted_at.timestamp() * 1_000_000)

    def entry(self) -> ChampionEntry:
        return ChampionEntry(**self.model_dump(include=set(ChampionEntry.model_fields)))


def champion_body(champion: Champion) -> bytes:
    """champion.json and its history entry hold exactly these bytes."""
    return champion.model_dump_json(indent=2).encode()


class Withdrawal(BaseModel):
    """A version an operator took out of production (a rollback, or another promoted by hand)."""

    reason: str
    at: datetime


class VersionSummary(BaseModel):
    version: str
    metrics: dict[str, float] = Field(default_factory=dict)
    passed: bool | None = None
    reason: str = ""
    is_champion: bool = False
    withdrawn: Withdrawal | None = None
    test_images: int | None = Field(None, description="the test split the metrics are from")


def version_id(finished_at: datetime, run_id: str) -> str:
    """Sortable by time, unique per run, and the same on a retry of the same publication."""
    suffix = hashlib.sha256(f"{run_id}/{finished_at.isoformat()}".encode()).hexdigest()[:6]
    return f"{finished_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


class ModelRegistry:
    def __init__(self, store: ObjectStore, model_name: str) -> None:
        self.store = store
        self.model_name = model_name
        self.keys = ModelKeys(model_name)

    def read_champion(self) -> tuple[Champion | None, str | None]:
        """The champion and the ETag to pass to `promote` (None, None before the first one).

        An unreadable champion.json raises RegistryCorrupt: guessing would let a worse model in.
        """
        info = self.store.head(self.keys.champion)
        if info is None:
            self._refuse_a_lost_champion()
            return None, None
        try:
            raw = self.store.get(self.keys.champion)
        except ObjectNotFound:
            self._refuse_a_lost_champion()
            return None, None
        try:
            return Champion.model_validate_json(raw), info.etag
        except ValidationError as error:
            raise RegistryCorrupt(
                f"{self.store.describe(self.keys.champion)} is unreadable "
                f"({error.error_count()} problem(s), first: {error.errors()[0]['msg']}); "
                f"{self._repair_advice()}"
            ) from None

    def _refuse_a_lost_champion(self) -> None:
        """No champion.json although champions were recorded: a lost file, not a first model."""
        logged = self.newest_logged_champion()
        if logged is not None:
            raise RegistryCorrupt(
                f"{self.store.describe(self.keys.champion)} is missing, but the champion history "
                f"names version {logged.version} (change {logged.serving_number}); "
                f"{self._repair_advice()}"
            )

    def _repair_advice(self) -> str:
        model = f"--model-name {self.model_name}"
        return (
            f"restore it from the champion history with `retrainer repair {model}`, or choose "
            f"the champion with `retrainer promote VERSION --repair --reason ... {model}` or "
            f"`retrainer rollback --repair --reason ... {model}`"
        )

    def read_history(self) -> list[Champion]:
        """Every champion.json ever written, oldest first (unreadable entries are skipped)."""
        entries = []
        for info in self.store.list(self.keys.history):
            try:
                entries.append(Champion.model_validate_json(self.store.get(info.key)))
            except (ObjectNotFound, ValidationError):
                continue
        return entries

    def newest_logged_champion(self) -> Champion | None:
        """The last champion the history recorded, or None when it recorded none."""
        keys = [info.key for info in self.store.list(self.keys.history)]
        for key in reversed(keys):
            try:
                return Champion.model_validate_json(self.store.get(key))
            except (ObjectNotFound, ValidationError):
                continue
        return None

    def manifest(self, version: str) -> Manifest:
        key = self.keys.version_file(version, MANIFEST_FILE)
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
        return self.champion_record(champion, etag)

    def champion_record(self, champion: Champion, etag: str) -> ChampionRecord:
        """The record of `champion`, read with `etag`, with what its manifest says."""
        try:
            manifest = self.manifest(champion.version)
        except ObjectNotFound:
            raise RegistryCorrupt(
                f"champion {champion.version} of '{self.model_name}' has no manifest: run "
                "`retrainer verify`, then promote or roll back with --repair"
            ) from None
        if MODEL_FILE not in manifest.files:
            raise RegistryCorrupt(f"the manifest of champion {champion.version} lists no model")
        return ChampionRecord(
            version=champion.version,
            etag=etag,
            class_names=manifest.class_names,
            work_key=manifest.work_key,
            model_key=self.keys.version_file(champion.version, MODEL_FILE),
            model_sha256=manifest.files[MODEL_FILE].sha256,
            test_fraction=manifest.parameters.get("test_fraction"),
        )

    def promote(
        self,
        version: str,
        run_id: str,
        reason: str,
        expected_etag: str | None,
        repair: bool = False,
        override: bool = False,
    ) -> Champion:
        """Point champion.json at `version`, unless someone else moved it since `expected_etag`.

        `override`: a person chose this version against the gate's order; the champion it demotes
        has its work withdrawn, so no nightly run trains that work and promotes it back.
        `repair` replaces a missing or unreadable champion.json, continuing the history's newest
        entry, still by compare-and-swap on what is there now.
        """
        self.check_promotable(version)
        try:
            current, current_etag = self.read_champion()
        except RegistryCorrupt:
            if not repair:
                raise
            current, current_etag = self.newest_logged_champion(), self._etag_of(self.keys.champion)
            expected_etag = current_etag
        if current is not None and (current.version, current.run_id) == (version, run_id):
            self.make_store_match_champion(current)  # the retry finishes what the first try began
            return current  # a retry of a promotion that already happened
        if current_etag != expected_etag:
            raise self._conflict(version)
        previous: list[ChampionEntry] = []
        if current is not None:
            previous = [current.entry(), *current.previous][:CHAMPION_HISTORY_LENGTH]
            if override and current.version != version:
                self.withdraw(current.version, f"demoted by {run_id} for {version}: {reason}")
        action: ChampionAction = "override" if override else "promotion"
        return self._write_champion(
            version, run_id, reason, previous, expected_etag, current, action
        )

    def rollback(self, run_id: str, reason: str, repair: bool = False) -> Champion:
        """Make the previous champion the champion again; its successor leaves the history and its
        work is withdrawn (not trained and promoted again unless a run is forced).

        With `repair` and a missing or unreadable champion.json, the rollback starts from the
        history's newest entry; with no history either (a store from before it), the newest
        version that passed its gate, was not withdrawn and verifies becomes champion.
        """
        try:
            current, etag = self.read_champion()
        except RegistryCorrupt:
            if not repair:
                raise
            current, etag = self.newest_logged_champion(), self._etag_of(self.keys.champion)
            if current is None:
                target = self.last_good_version()
                self.check_promotable(target)
                return self._write_champion(
                    target,
                    run_id,
                    f"repair: champion.json was unreadable and no history recorded; {reason}",
                    [],
                    etag,
                    None,
                    "rollback",
                )
        if current is None or not current.previous:
            raise BadInput(f"'{self.model_name}' has no previous champion to roll back to")
        target_entry, *older = current.previous
        self.check_promotable(target_entry.version)
        self.withdraw(current.version, f"rolled back by {run_id}: {reason}")
        return self._write_champion(
            target_entry.version,
            run_id,
            f"rollback from {current.version}: {reason}",
            older,
            etag,
            current,
            "rollback",
        )

    def restore_champion(self) -> Champion:
        """Rewrite a missing or unreadable champion.json as the history's newest entry."""
        try:
            current, _ = self.read_champion()
        except RegistryCorrupt:
            pass
        else:
            named = f"champion {current.version}" if current else "no champion yet"
            raise BadInput(
                f"champion.json of '{self.model_name}' is sound ({named}): nothing to do"
            )
        logged = self.newest_logged_champion()
        if logged is None:
            raise BadInput(
                f"'{self.model_name}' has no champion history to restore from: choose the champion "
                "with `retrainer promote VERSION --repair --reason ...` or `retrainer rollback "
                "--repair --reason ...`"
            )
        self.check_promotable(logged.version)
        self.store.put_if(
            self.keys.champion, champion_body(logged), self._etag_of(self.keys.champion)
        )
        written, _ = self.read_champion()
        if written != logged:
            raise PromotionConflict(f"champion.json of '{self.model_name}' changed meanwhile")
        self.make_store_match_champion(logged)
        return logged

    def check_promotable(self, version: str) -> None:
        """Refuse a version whose files are not all there as its manifest lists them, or that
        has no SavedModel (TF Serving would go on serving the champion it replaces)."""
        try:
            manifest = self.manifest(version)
        except ObjectNotFound:
            raise BadInput(
                f"version {version} of '{self.model_name}' is not fully published"
            ) from None
        prefix = self.keys.version(version)
        present = {info.key[len(prefix) :]: info.size for info in self.store.list(prefix)}
        damaged = sorted(
            name for name, entry in manifest.files.items() if present.get(name) != entry.size
        )
        if damaged:
            raise BadInput(
                f"version {version} of '{self.model_name}' is missing or has damaged files "
                f"({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}): not promoted; "
                "run `retrainer verify --all`"
            )
        if manifest.serving is None:
            raise BadInput(
                f"version {version} of '{self.model_name}' was published before versions carried "
                "a SavedModel: TensorFlow Serving could not serve it, so it cannot be champion; "
                "choose a newer version"
            )

    def withdraw(self, version: str, reason: str) -> None:
        """Record that a person took `version` out of production: its work is not redone."""
        manifest = self.manifest(version)
        self.write_work_record(
            WorkRecord(
                work_key=manifest.work_key,
                version=version,
                status="withdrawn",
                reason=reason,
                finished_at=datetime.now(UTC),
            )
        )

    def withdrawn_versions(self) -> set[str]:
        return {
            record.version
            for info in self.store.list(self.keys.works)
            if (record := self._read_work_record_at(info.key)) and record.status == "withdrawn"
        }

    def last_good_version(self) -> str:
        """The newest version whose gate passed, that no one withdrew and whose files all match
        its manifest."""
        withdrawn = self.withdrawn_versions()
        for summary in reversed(self.list_versions()):
            if (
                summary.passed
                and summary.version not in withdrawn
                and not self.verify_version(summary.version)
            ):
                return summary.version
        raise BadInput(
            f"'{self.model_name}' has no version that passed its gate, was not withdrawn "
            "and verifies"
        )

    def _etag_of(self, key: str) -> str | None:
        info = self.store.head(key)
        return info.etag if info else None

    def _conflict(self, version: str) -> PromotionConflict:
        return PromotionConflict(
            f"champion of '{self.model_name}' was changed by another run in the meantime; "
            f"version {version} stays published but unpromoted"
        )

    def _next_generation(self, replacing: Champion | None) -> int:
        """Above the champion it replaces and above every served folder (a store that lost its
        champion.json, or served folders numbered by time before the counter existed)."""
        served = self._served_folders()
        return max([replacing.serving_number if replacing else 0, *served]) + 1

    def _write_champion(
        self,
        version: str,
        run_id: str,
        reason: str,
        previous: list[ChampionEntry],
        expected_etag: str | None,
        replacing: Champion | None,
        action: ChampionAction,
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
            generation=self._next_generation(replacing),
            action=action,
            previous=previous,
        )
        self.store.put_if(self.keys.champion, champion_body(champion), expected_etag)
        written, _ = self.read_champion()
        if written is None or (written.version, written.run_id) != (version, run_id):
            raise self._conflict(version)
        if [entry.version for entry in written.previous[:1]] != [e.version for e in previous[:1]]:
            raise PromotionConflict(
                f"champion.json of '{self.model_name}' names {version} but not the champion it "
                "replaced; run `retrainer verify`"
            )
        self.make_store_match_champion(written)
        return written

    def make_store_match_champion(self, champion: Champion) -> list[str]:
        """Finish a change of champion: its history entry, and its SavedModel in the highest
        serving folder. Idempotent and cheap when all is in place (a HEAD and a LIST); every run
        calls it, so a change cut short by a kill is finished by the next run. Says what it did.
        """
        done = []
        key = self.keys.history_entry(champion.serving_number)
        if not self.store.exists(key):
            self.store.put_if(key, champion_body(champion), None)
            done.append(f"recorded champion change {champion.serving_number} in the history")
        return done + self._lay_out_for_serving(champion)

    def serving_location(self, champion: Champion) -> str:
        """`serving/<model>/<n>/`, n the champion's generation: TF Serving serves the highest."""
        return self.keys.served(champion.serving_number)

    def _served_folders(self) -> dict[int, dict[str, int]]:
        """Every numbered folder under the serving prefix: its files and their sizes."""
        served: dict[int, dict[str, int]] = defaultdict(dict)
        for info in self.store.list(f"{self.keys.serving}/"):
            number = self.keys.served_number_in(info.key)
            if number.isdigit():
                served[int(number)][info.key.removeprefix(self.keys.served(int(number)))] = (
                    info.size
                )
        return served

    def _serving_files(self, manifest: Manifest) -> dict[str, str]:
        """The SavedModel's files: name in the serving folder -> name in the version."""
        assert manifest.serving is not None
        source = f"{manifest.serving.directory}/"
        return {name[len(source) :]: name for name in manifest.files if name.startswith(source)}

    def _lay_out_for_serving(self, champion: Champion) -> list[str]:
        """Copy the champion's SavedModel where TensorFlow Serving looks, unless it is there, and
        take down any folder numbered above it (TF Serving would serve that one).

        Every file is checked against the manifest, and `saved_model.pb` goes last (and is
        deleted first): TF Serving takes a folder without it for unfinished.
        """
        manifest = self.manifest(champion.version)
        if manifest.serving is None:
            return []  # published before the export; such versions are no longer promoted
        files = self._serving_files(manifest)
        served = self._served_folders()
        target = self.serving_location(champion)
        done = []
        expected = {name: manifest.files[source].size for name, source in files.items()}
        if served.get(champion.serving_number) != expected:
            for name in sorted(files, key=lambda name: (name == "saved_model.pb", name)):
                key = self.keys.version_file(champion.version, files[name])
                data = self.store.get(key)
                if hashlib.sha256(data).hexdigest() != manifest.files[files[name]].sha256:
                    raise ModelIntegrityError(
                        f"{self.store.describe(key)} does not match its manifest: not laid out "
                        "for serving; run `retrainer verify`"
                    )
                self.store.put(target + name, data)
            done.append(f"laid out version {champion.version} for serving at {target}")
        above = sorted(number for number in served if number > champion.serving_number)
        if above and self.read_champion()[0] == champion:  # not a promotion that just happened
            for number in above:
                names = sorted(served[number], key=lambda name: name != "saved_model.pb")
                for name in names:
                    self.store.delete(self.keys.served(number) + name)
            done.append(f"took down served folders above the champion's: {above}")
        return done

    def serving_problems(self, champion: Champion) -> list[str]:
        """One line per way the served folders differ from the champion's SavedModel."""
        manifest = self.manifest(champion.version)
        served = self._served_folders()
        where = self.store.describe(self.keys.serving)
        if manifest.serving is None:
            return [f"champion {champion.version} has no SavedModel: {where} does not serve it"]
        problems = []
        if served and max(served) != champion.serving_number:
            problems.append(
                f"{where}/{max(served)} is served, not the champion's {champion.serving_number}"
            )
        for name, source in sorted(self._serving_files(manifest).items()):
            key = self.serving_location(champion) + name
            try:
                data = self.store.get(key)
            except ObjectNotFound:
                problems.append(f"{self.store.describe(key)}: missing")
                continue
            if hashlib.sha256(data).hexdigest() != manifest.files[source].sha256:
                problems.append(f"{self.store.describe(key)}: differs from the champion's file")
        return problems

    def read_json(self, version: str, filename: str) -> dict[str, object]:
        data = json.loads(self.store.get(self.keys.version_file(version, filename)))
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
        return sorted(
            {
                self.keys.version_in(info.key)
                for info in self.store.list(self.keys.versions)
                if info.key.endswith(f"/{MANIFEST_FILE}")
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
            try:
                manifest: Manifest | None = self.manifest(version)
            except RegistryCorrupt:
                manifest = None  # `verify` names it; the list still shows the version
            is_champion = champion is not None and champion.version == version
            # A champion rolled back to is champion, whatever its work's record says.
            work = (
                self.read_work_record(manifest.work_key) if manifest and not is_champion else None
            )
            withdrawn = (
                Withdrawal(reason=work.reason, at=work.finished_at)
                if work is not None and work.status == "withdrawn" and work.version == version
                else None
            )
            summaries.append(
                VersionSummary(
                    version=version,
                    metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
                    passed=decision.get("passed"),
                    reason=str(decision.get("reason", "")),
                    is_champion=is_champion,
                    withdrawn=withdrawn,
                    test_images=manifest.test_images or None if manifest else None,
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
                data = self.store.get(self.keys.version_file(version, name))
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
        path = models_dir / champion.version / MODEL_FILE
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
        return self._read_work_record_at(self.keys.work_record(work_key))

    def _read_work_record_at(self, key: str) -> WorkRecord | None:
        try:
            return WorkRecord.model_validate_json(self.store.get(key))
        except ObjectNotFound:
            return None
        except ValidationError:
            return None  # a record we cannot read only costs a retraining

    def write_work_record(self, record: WorkRecord) -> None:
        self.store.put(self.keys.work_record(record.work_key), record.model_dump_json().encode())
