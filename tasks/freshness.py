"""The freshness tasks: name this run's work, and say when it was already done."""

from __future__ import annotations

import shutil

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from retrainer.freshness import identify_work, skip_if_unchanged
from retrainer.records import ChampionRecord, DataSnapshot, Publication, Work
from retrainer.report import artifact_key, skipped_report
from retrainer.settings import Settings
from tasks.lease import model_registry
from tasks.retries import io_task
from tasks.runtime import run_folder


@task(name="identify work")
def identify(snapshot: DataSnapshot, settings: Settings) -> Work:
    work = identify_work(snapshot.fingerprint, settings.training_config())
    get_run_logger().info("Work %s (%s)", work.key[:12], work.code.describe())
    return work


@io_task("check for changes")
def check_for_changes(
    work: Work, champion: ChampionRecord | None, settings: Settings
) -> Publication | None:
    """The "skipped" outcome when this work was already done (promoted or rejected), else None."""
    registry = model_registry(settings)
    done = skip_if_unchanged(registry, champion, work)
    if done:
        get_run_logger().info("Already done: %s", done.message)
    return done


@task(name="report skipped run")
def report_skipped(skipped: Publication, settings: Settings) -> Publication:
    shutil.rmtree(run_folder(settings).root, ignore_errors=True)
    create_markdown_artifact(
        markdown=skipped_report(skipped),
        key=artifact_key(skipped.model_name),
        description=f"Run report: {skipped.outcome}",
    )
    return skipped
