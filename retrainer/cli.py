"""The `retrainer` command: run a retraining now, seed the demo data, list model versions."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import timedelta

from pydantic import ValidationError

from retrainer.errors import BadInput, SettingsError
from retrainer.lease import LeaseHeld, ModelLease
from retrainer.preflight import check_location, check_stores
from retrainer.registry import ModelRegistry, PromotionConflict
from retrainer.settings import (
    DEMO_DATASET_KEY,
    RetrainParameters,
    Settings,
    describe_validation_error,
    join_url,
    load_settings,
)
from retrainer.storage import open_store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrainer",
        description="Retrain a Keras image classifier and promote it only when it is better. "
        "Settings come from RETRAINER_* environment variables and .env.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one retraining now, under Prefect")
    run.add_argument("--model-name", help="publish under this model name")
    run.add_argument("--data-url", help="s3://bucket/prefix or folder with one folder per class")
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", type=int)
    run.add_argument("--learning-rate", type=float)
    run.add_argument("--min-accuracy", type=float, help="gate: lowest test accuracy accepted")
    run.add_argument("--force", action="store_true", help="train even if nothing changed")

    models = commands.add_parser("models", help="list published versions and the champion")
    models.add_argument("--model-name", help="model to list (default: RETRAINER_MODEL_NAME)")

    promote = commands.add_parser("promote", help="make a published version champion (override)")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why the gate is overridden (recorded)")
    promote.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")

    promote.add_argument(
        "--repair", action="store_true", help="replace an unreadable champion.json (history lost)"
    )

    rollback = commands.add_parser("rollback", help="make the previous champion champion again")
    rollback.add_argument("--reason", required=True, help="why (recorded in champion.json)")
    rollback.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    rollback.add_argument(
        "--repair",
        action="store_true",
        help="replace an unreadable champion.json with the newest version that passed and verifies",
    )

    verify = commands.add_parser(
        "verify", help="check the champion, its manifest and every file's sha256"
    )
    verify.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    verify.add_argument("--all", action="store_true", help="check every published version too")

    gc = commands.add_parser(
        "gc", help="remove unfinished versions, partial uploads, stale checkpoints and caches"
    )
    gc.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    gc.add_argument(
        "--keep", type=int, default=10, help="unpromoted versions always kept (default: 10)"
    )
    gc.add_argument(
        "--older-than",
        type=float,
        default=30.0,
        help="days after which unpromoted versions and abandoned checkpoints go (default: 30)",
    )
    gc.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")

    serve = commands.add_parser(
        "serve", help="run the flow on its nightly schedule from this machine (no worker needed)"
    )
    serve.add_argument("--cron", default="0 2 * * *", help="schedule (default: 02:00 daily)")
    serve.add_argument("--timezone", default="UTC", help="time zone of the schedule")

    notify = commands.add_parser(
        "notify", help="create Prefect automations that notify on failed or rejected runs"
    )
    notify.add_argument(
        "--block",
        required=True,
        help="notification block made in the Prefect UI, as type/name: slack-webhook/ml-alerts",
    )

    commands.add_parser(
        "demo",
        help="three nights on the demo digits: first model, more data (warm start, gate), "
        "nothing new (skip)",
    )

    commands.add_parser(
        "seed-demo", help=f"copy the demo digits into the store ({DEMO_DATASET_KEY})"
    )
    return parser


def run_command(settings: Settings, arguments: argparse.Namespace) -> int:
    try:
        parameters = RetrainParameters(
            model_name=arguments.model_name,
            data_url=arguments.data_url,
            epochs=arguments.epochs,
            batch_size=arguments.batch_size,
            learning_rate=arguments.learning_rate,
            min_accuracy=arguments.min_accuracy,
            force=arguments.force,
        )
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, prefix="--")) from None
    check_stores(settings.with_parameters(parameters))

    from flows.retrain import retrain

    outcome = retrain(parameters)
    print(f"Model '{outcome.model_name}': {outcome.status}")
    if outcome.version_url:
        print(f"  version {outcome.version} uploaded to {outcome.version_url}")
    print(f"  {outcome.message}")
    print(f"  champion: {outcome.champion_version or 'none'}")
    return 0


def models_command(settings: Settings, model_name: str | None) -> int:
    registry = ModelRegistry(open_store(settings.store_url), model_name or settings.model_name)
    versions = registry.list_versions()
    if not versions:
        print(f"No published versions of '{registry.model_name}' in {settings.store_url}")
        return 0
    print(f"{'version':<26} {'test_accuracy':>13} {'test_loss':>9} {'macro_f1':>9}  status")
    for summary in versions:
        if summary.is_champion:
            status = "CHAMPION"
        elif summary.passed:
            status = "passed, not champion"
        else:
            status = summary.reason or "rejected"
        # Versions from before the test split have validation figures only.
        metrics = summary.metrics
        accuracy = metrics.get("test_accuracy", metrics.get("val_accuracy", float("nan")))
        loss = metrics.get("test_loss", metrics.get("val_loss", float("nan")))
        f1 = metrics.get("test_macro_f1", metrics.get("val_macro_f1", float("nan")))
        print(f"{summary.version:<26} {accuracy:>13.4f} {loss:>9.4f} {f1:>9.4f}  {status}")
    return 0


def promote_command(settings: Settings, arguments: argparse.Namespace) -> int:
    registry = ModelRegistry(
        open_store(settings.store_url), arguments.model_name or settings.model_name
    )
    etag = None if arguments.repair else registry.read_champion()[1]
    champion = registry.promote(
        arguments.version,
        f"manual by {getpass.getuser()}",
        f"override: {arguments.reason}",
        etag,
        repair=arguments.repair,
    )
    print(f"Version {champion.version} is now champion of '{registry.model_name}' (override)")
    return 0


def rollback_command(settings: Settings, arguments: argparse.Namespace) -> int:
    registry = ModelRegistry(
        open_store(settings.store_url), arguments.model_name or settings.model_name
    )
    champion = registry.rollback(
        f"manual by {getpass.getuser()}", arguments.reason, repair=arguments.repair
    )
    print(f"Rolled back: version {champion.version} is champion of '{registry.model_name}' again")
    return 0


def verify_command(settings: Settings, arguments: argparse.Namespace) -> int:
    """One line per problem; exit 0 when the champion (and with --all every version) is whole."""
    registry = ModelRegistry(
        open_store(settings.store_url), arguments.model_name or settings.model_name
    )
    problems: list[str] = []
    try:
        champion = registry.read_champion_record()
    except BadInput as error:
        champion, problems = None, [str(error)]
    versions = registry.published_versions() if arguments.all else []
    if champion is not None and champion.version not in versions:
        versions.append(champion.version)
    for version in versions:
        problems += registry.verify_version(version)
    for problem in problems:
        print(problem)
    if not problems:
        named = f"champion {champion.version}" if champion else "no champion"
        print(f"'{registry.model_name}': {named}; {len(versions)} version(s) verified, no problem")
    return 1 if problems else 0


def gc_command(settings: Settings, arguments: argparse.Namespace) -> int:
    from retrainer.gc import collect_garbage

    store = open_store(settings.store_url)
    model_name = arguments.model_name or settings.model_name
    registry = ModelRegistry(store, model_name)
    who = f"gc by {getpass.getuser()}"
    with ModelLease(store, model_name, who, seconds=settings.lease_seconds):
        removed = collect_garbage(
            registry,
            settings.cache,
            keep=arguments.keep,
            older_than=timedelta(days=arguments.older_than),
            dry_run=arguments.dry_run,
        )
    for line in removed:
        print(("would remove " if arguments.dry_run else "removed ") + line)
    print(f"{len(removed)} item(s) {'to remove' if arguments.dry_run else 'removed'}")
    return 0


def serve_command(settings: Settings, arguments: argparse.Namespace) -> int:
    check_stores(settings)
    from prefect.schedules import Cron

    from flows.retrain import retrain

    print(f"Serving 'retrain' on '{arguments.cron}' ({arguments.timezone}); Ctrl-C stops")
    retrain.serve(
        name="nightly-local",
        schedules=[Cron(arguments.cron, timezone=arguments.timezone)],
        tags=["retrainer", "nightly"],
        limit=1,
    )
    return 0


def notify_command(block: str) -> int:
    from flows.notifications import create_notification_automations

    for name in create_notification_automations(block):
        print(f"Automation ready: {name}")
    return 0


DEMO_NIGHTS = (
    ("Night 1: the first 60% of the digits arrive", 0.6),
    ("Night 2: the rest of the digits arrive", 1.0),
    ("Night 3: nothing new", 1.0),
)


def demo_command(settings: Settings) -> int:
    """What the product is for, in three nightly runs on the embedded default."""
    from flows.retrain import retrain
    from retrainer.demo import seed_demo_data

    store = open_store(settings.store_url)
    check_location("RETRAINER_STORE_URL", settings.store_url)
    parameters = RetrainParameters(data_url=join_url(settings.store_url, DEMO_DATASET_KEY))
    outcomes = []
    for title, share in DEMO_NIGHTS:
        print(f"\n=== {title} ===", flush=True)
        added = seed_demo_data(store, DEMO_DATASET_KEY, share)
        print(f"{added} new images in {store.describe(DEMO_DATASET_KEY)}", flush=True)
        outcomes.append((title, retrain(parameters)))
    print("\n=== What happened ===")
    for title, outcome in outcomes:
        print(f"{title}\n  {outcome.status}: {outcome.message}")
        if outcome.version_url:
            print(f"  model uploaded to {outcome.version_url}")
    champion = outcomes[-1][1].champion_version
    print(f"\nChampion of '{settings.model_name}': {champion} ({settings.store_url})")
    print("See every version with: .venv/bin/retrainer models")
    return 0


def seed_demo_command(settings: Settings) -> int:
    from retrainer.demo import seed_demo_data

    store = open_store(settings.store_url)
    check_location("RETRAINER_STORE_URL", settings.store_url)
    written = seed_demo_data(store, DEMO_DATASET_KEY)
    print(f"Demo data at {store.describe(DEMO_DATASET_KEY)}: {written} images added")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if arguments.command == "run":
            return run_command(settings, arguments)
        if arguments.command == "models":
            return models_command(settings, arguments.model_name)
        if arguments.command == "promote":
            return promote_command(settings, arguments)
        if arguments.command == "rollback":
            return rollback_command(settings, arguments)
        if arguments.command == "verify":
            return verify_command(settings, arguments)
        if arguments.command == "gc":
            return gc_command(settings, arguments)
        if arguments.command == "demo":
            return demo_command(settings)
        if arguments.command == "serve":
            return serve_command(settings, arguments)
        if arguments.command == "notify":
            return notify_command(arguments.block)
        return seed_demo_command(settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (BadInput, PromotionConflict, LeaseHeld) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
