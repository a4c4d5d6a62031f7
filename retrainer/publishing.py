"""Publish: upload a version's files, manifest last, then move the champion pointer if it passed.

A reader that follows champion.json never finds a missing or partial file: every file of a version
is uploaded (each put is atomic) before its manifest, and the manifest before champion.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from retrainer.checkpoints import CheckpointMirror
from retrainer.layout import (
    CONFUSION_PLOT,
    CURVES_PLOT,
    DECISION_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SAVED_MODEL_DIR,
    TENSORBOARD_DIR,
    RunFolder,
)
from retrainer.plots import plot_confusion_matrix, plot_training_curves
from retrainer.records import (
    ChampionRecord,
    DataSplit,
    FileEntry,
    GateDecision,
    Manifest,
    Publication,
    TrainedModel,
    Work,
    WorkRecord,
)
from retrainer.registry import ModelRegistry, PromotionConflict, version_id
from retrainer.serving import SERVING_SIGNATURE, export_serving_model
from retrainer.storage import sha256_of_file

logger = logging.getLogger(__name__)

PLOTS = (CURVES_PLOT, CONFUSION_PLOT)
FOLDERS = (f"{TENSORBOARD_DIR}/", f"{SAVED_MODEL_DIR}/")
PACKAGES = ("retrainer", "tensorflow", "keras", "numpy", "prefect", "boto3")


@dataclass(frozen=True)
class Published:
    """How publishing ended, and the plots it wrote (local files, for the run report)."""

    publication: Publication
    plots: dict[str, Path]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_manifest(
    files: dict[str, Path],
    split: DataSplit,
    work: Work,
    trained: TrainedModel,
    run_id: str,
) -> Manifest:
    return Manifest(
        files={
            name: FileEntry(sha256=sha256_of_file(path), size=path.stat().st_size)
            for name, path in sorted(files.items())
        },
        data_fingerprint=split.data_fingerprint,
        class_names=split.class_names,
        train_images=split.train_count,
        validation_images=split.validation_count,
        test_images=split.test_count,
        parameters=work.config.model_dump(mode="json"),
        device=trained.device,
        started_from=trained.started_from,
        resumed_from_epoch=trained.resumed_from_epoch,
        epochs_run=trained.epochs_run,
        git_commit=work.code_version,
        work_key=work.key,
        code=work.code,
        packages=package_versions(),
        run_id=run_id,
        started_at=trained.started_at,
        finished_at=datetime.now(UTC),
        preprocessing=split.preprocessing,
        serving=SERVING_SIGNATURE,
    )


def publish_version(
    registry: ModelRegistry,
    split: DataSplit,
    trained: TrainedModel,
    decision: GateDecision,
    champion: ChampionRecord | None,
    work: Work,
    checkpoints: CheckpointMirror,
    run_id: str,
) -> Published:
    """Upload model, history, metrics, decision and manifest; promote if the gate passed.

    The work is then finished, whatever the gate said: its record is written (so a rejected work
    is not trained again) and its checkpoints are removed.
    """
    version = version_id(trained.finished_at, run_id)
    # The run's own folder holds everything uploaded, so the report can show the pictures.
    run = RunFolder(trained.model_path.parent)
    scores = decision.candidate
    metrics = {
        **scores.headline("test"),
        **(decision.candidate_validation.headline("val") if decision.candidate_validation else {}),
        "precision": scores.precision,
        "recall": scores.recall,
        "confusion_matrix": scores.confusion_matrix,
    }
    run.file(METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    run.file(DECISION_FILE).write_text(decision.model_dump_json(indent=2))
    history = json.loads(trained.history_path.read_text())
    files = {
        MODEL_FILE: trained.model_path,
        HISTORY_FILE: trained.history_path,
        METRICS_FILE: run.file(METRICS_FILE),
        DECISION_FILE: run.file(DECISION_FILE),
        CURVES_PLOT: plot_training_curves(history, trained.kept_epoch, run.file(CURVES_PLOT)),
        CONFUSION_PLOT: plot_confusion_matrix(
            scores.confusion_matrix, split.class_names, run.file(CONFUSION_PLOT)
        ),
    }
    export_serving_model(
        trained.model_path, split.class_names, split.preprocessing, run.file(SAVED_MODEL_DIR)
    )
    for tree in (trained.tensorboard_dir, run.file(SAVED_MODEL_DIR)):
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                files[path.relative_to(run.root).as_posix()] = path
    for name, path in files.items():
        registry.store.upload(registry.keys.version_file(version, name), path)
    manifest = build_manifest(files, split, work, trained, run_id)
    registry.store.put(
        registry.keys.version_file(version, MANIFEST_FILE),
        manifest.model_dump_json(indent=2).encode(),
    )

    version_url = registry.store.describe(registry.keys.version(version))
    logger.info("Uploaded version %s to %s", version, version_url)
    published = Publication(
        status="rejected",
        model_name=registry.model_name,
        version=version,
        version_url=version_url,
        files=[
            *(name for name in files if not name.startswith(FOLDERS)),
            *FOLDERS,
            MANIFEST_FILE,
        ],
        champion_version=decision.champion_version,
        message=f"version {version} {decision.reason}; champion unchanged",
    )
    outcome = promote_if_passed(registry, published, decision, champion, run_id)
    registry.write_work_record(
        WorkRecord(
            work_key=manifest.work_key,
            version=version,
            status=outcome.status,  # never "skipped" here
            reason=decision.reason,
            finished_at=manifest.finished_at,
        )
    )
    checkpoints.clear()
    plots = {name: path for name, path in files.items() if name in PLOTS}
    return Published(publication=outcome, plots=plots)


def promote_if_passed(
    registry: ModelRegistry,
    published: Publication,
    decision: GateDecision,
    champion: ChampionRecord | None,
    run_id: str,
) -> Publication:
    """The publication as promoted, rejected, or lost to another run's promotion.

    The promotion moves champion.json only if it still holds the champion this run read (its
    ETag): a champion promoted or rolled back meanwhile is never silently replaced.
    """
    version = str(published.version)
    if not decision.passed:
        logger.warning("Not promoted, %s", decision.reason)
        return published
    try:
        expected = champion.etag if champion else None
        promoted = registry.promote(version, run_id, decision.reason, expected)
    except PromotionConflict as conflict:
        logger.warning("Not promoted: %s", conflict)
        now, _ = registry.read_champion()
        return published.model_copy(
            update={
                "status": "conflict",
                "champion_version": now.version if now else None,
                "message": str(conflict),
            }
        )
    logger.info("Promoted version %s to champion of '%s'", version, registry.model_name)
    served = registry.store.describe(registry.serving_location(promoted))
    logger.info("Laid out for TensorFlow Serving at %s", served)
    return published.model_copy(
        update={
            "status": "promoted",
            "champion_version": version,
            "message": f"version {version} is the new champion ({decision.reason})",
        }
    )
