"""The `retrainer` command: run a retraining now, seed the demo data, list model versions."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from textwrap import shorten
from typing import TYPE_CHECKING

from pydantic import ValidationError

from retrainer import __version__
from retrainer.errors import BadInput, RegistryCorrupt, SettingsError, redact
from retrainer.layout import DEMO_DATA, check_version_name
from retrainer.lease import LeaseHeld, ModelLease
from retrainer.preflight import check_before_work, check_location
from retrainer.records import Publication
from retrainer.registry import ModelRegistry, PromotionConflict
from retrainer.settings import (
    RetrainParameters,
    Settings,
    check_model_name,
    describe_validation_error,
    load_settings,
)
from retrainer.storage import open_store
from retrainer.tensorflow_runtime import start_tensorflow

if TYPE_CHECKING:
    from prefect.states import State


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# The run form's JSON types, as argparse reads them.
OPTION_TYPES: dict[str, type] = {"integer": int, "number": float, "string": str}


def add_parameter_options(parser: argparse.ArgumentParser) -> None:
    """One option per run parameter, typed and described (bounds included) as the Prefect form
    shows it."""
    for name, shown in RetrainParameters.model_json_schema()["properties"].items():
        if shown["type"] == "boolean":
            parser.add_argument(option_name(name), action="store_true", help=shown["description"])
            continue
        kind = OPTION_TYPES[shown["type"]]
        parser.add_argument(
            option_name(name), type=kind, choices=shown.get("enum"), help=shown["description"]
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrainer",
        description="Retrain a Keras image classifier and promote it only when it is better. "
        "Settings come from RETRAINER_* environment variables and .env.",
    )
    parser.add_argument("--version", action="version", version=f"retrainer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one retraining now, under Prefect")
    add_parameter_options(run)
    run.add_argument("--json", action="store_true", help="the outcome as one JSON object, last")
    run.set_defaults(handler=run_command)

    models = commands.add_parser("models", help="list published versions and the champion")
    models.add_argument("--model-name", help="model to list (default: RETRAINER_MODEL_NAME)")
    models.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    models.set_defaults(handler=models_command)

    promote = commands.add_parser("promote", help="make a published version champion (override)")
    promote.add_argument("version", type=version_argument)
    promote.add_argument("--reason", required=True, help="why the gate is overridden (recorded)")
    promote.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")

    promote.add_argument(
        "--repair",
        action="store_true",
        help="replace a missing or unreadable champion.json, continuing its recorded history",
    )
    promote.set_defaults(handler=promote_command)

    rollback = commands.add_parser("rollback", help="make the previous champion champion again")
    rollback.add_argument("--reason", required=True, help="why (recorded in champion.json)")
    rollback.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    rollback.add_argument(
        "--repair",
        action="store_true",
        help="with a missing or unreadable champion.json: roll back from the history's last "
        "champion (without a history: the newest version that passed, was not withdrawn and "
        "verifies)",
    )
    rollback.set_defaults(handler=rollback_command)

    repair = commands.add_parser(
        "repair", help="restore a missing or unreadable champion.json from the champion history"
    )
    repair.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    repair.set_defaults(handler=repair_command)

    verify = commands.add_parser(
        "verify",
        help="check the champion, its manifest, every file's sha256 and what TF Serving serves",
    )
    verify.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    verify.add_argument("--all", action="store_true", help="check every published version too")
    verify.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    verify.set_defaults(handler=verify_command)

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
    gc.set_defaults(handler=gc_command)

    predict = commands.add_parser(
        "predict", help="classify image files with the champion's (or a version's) SavedModel"
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument(
        "--version",
        dest="model_version",
        type=version_argument,
        help="a version (default: champion)",
    )
    predict.add_argument("--model-name", help="model (default: RETRAINER_MODEL_NAME)")
    predict.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    predict.set_defaults(handler=predict_command)

    serve = commands.add_parser(
        "serve", help="run the flow on its nightly schedule from this machine (no worker needed)"
    )
    serve.add_argument(
        "--cron", help="schedule (default: the nightly deployment's in prefect.yaml)"
    )
    serve.add_argument("--timezone", help="time zone of the schedule (default: prefect.yaml's)")
    serve.set_defaults(handler=serve_command)

    notify = commands.add_parser(
        "notify", help="create Prefect automations that notify on failed or rejected runs"
    )
    notify.add_argument(
        "--block",
        required=True,
        help="notification block made in the Prefect UI, as type/name: slack-webhook/ml-alerts",
    )
    notify.set_defaults(handler=notify_command)

    doctor = commands.add_parser(
        "doctor",
        help="what this node gives a run: TensorFlow's build, GPUs and their kernels, CUDA cache, "
        "stores, cache volume; exit 1 when a required piece is missing",
    )
    doctor.add_argument(
        "--benchmark",
        action="store_true",
        help="also measure the configured model's training images/s in float32 and mixed precision",
    )
    doctor.set_defaults(handler=doctor_command)

    demo = commands.add_parser(
        "demo",
        help="three nights on the demo digits: first model, more data (warm start, gate), "
        "nothing new (skip)",
    )
    demo.set_defaults(handler=demo_command)

    seed = commands.add_parser(
        "seed-demo", help=f"copy the demo digits into the store ({DEMO_DATA})"
    )
    seed.set_defaults(handler=seed_demo_command)
    return parser


def version_argument(text: str) -> str:
    try:
        return check_version_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def open_registry(settings: Settings, arguments: argparse.Namespace) -> ModelRegistry:
    """The registry of the model the command names (`--model-name`, else the setting), once
    the model store answered: a bad name or an unusable store is one line, exit 2."""
    name = arguments.model_name or settings.model_name
    try:
        check_model_name(name)
    except ValueError as error:
        raise SettingsError(f"--model-name: {error}") from None
    check_location("RETRAINER_STORE_URL", settings.store_url)
    return ModelRegistry(open_store(settings.store_url), name)


@contextmanager
def leased_registry(
    settings: Settings, arguments: argparse.Namespace, command: str
) -> Iterator[ModelRegistry]:
    """The registry of the command's model under the model's lease: an operator's change never
    overlaps a night's run or another command's change (a promotion during gc lost its files);
    its writes stop if the lease is lost."""
    registry = open_registry(settings, arguments)
    who = f"{command} by {getpass.getuser()}"
    with ModelLease(
        registry.store, registry.model_name, who, seconds=settings.lease_seconds
    ) as lease:
        yield ModelRegistry(lease.guard(registry.store), registry.model_name)


def run_command(settings: Settings, arguments: argparse.Namespace) -> int:
    try:
        parameters = RetrainParameters(
            **{name: getattr(arguments, name) for name in RetrainParameters.model_fields}
        )
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, style="option")) from None
    run_settings = settings.with_parameters(parameters)
    check_before_work(run_settings)

    from flows.retrain import run_here

    state = run_here(parameters)
    if arguments.json and not state.is_completed():
        failed = {
            "state": state.name,
            "message": redact(str(state.message)),
            "report": report_location(state, run_settings.model_name),
        }
        print(json.dumps(failed, indent=2))
        return 2 if isinstance(state.result(raise_on_failure=False), SettingsError) else 1
    outcome = state.result()  # a failed run raises its error here
    report = report_location(state, outcome.model_name)
    if arguments.json:
        night = {"state": outcome.outcome, **outcome.model_dump(mode="json"), "report": report}
        print(json.dumps(night, indent=2))
        return 0
    print(f"Model '{outcome.model_name}'")
    if outcome.version_url:
        print(f"  version {outcome.version} uploaded to {outcome.version_url}")
    print(f"  champion: {outcome.champion_version or 'none'}")
    print(f"  report: {report}")
    print(f"{outcome.outcome}: {outcome.message}")  # last: what the night did
    return 0


def report_location(state: State[Publication], model_name: str) -> str:
    """Where the run's report is: its page in the Prefect UI, else the artifact's key and run."""
    from prefect.settings import PREFECT_UI_URL

    from retrainer.report import artifact_key

    ui = PREFECT_UI_URL.value()
    run_id = state.state_details.flow_run_id
    if ui and run_id:
        return f"{ui.rstrip('/')}/runs/flow-run/{run_id}?tab=Artifacts"
    return f"Prefect artifact '{artifact_key(model_name)}' of flow run {run_id}"


def models_command(settings: Settings, arguments: argparse.Namespace) -> int:
    registry = open_registry(settings, arguments)
    versions = registry.list_versions()
    if arguments.json:
        print(json.dumps([summary.model_dump(mode="json") for summary in versions], indent=2))
        return 0
    if not versions:
        print(f"No published versions of '{registry.model_name}' in {settings.store_url}")
        return 0
    print(f"Versions of '{registry.model_name}' in {settings.store_url}, oldest first:\n")
    print(
        f"  {'version':<24} {'test accuracy':>13} {'test loss':>9} {'macro F1':>8} "
        f"{'test images':>11}  status"
    )
    for summary in versions:
        if summary.is_champion:
            status = "champion"
        elif summary.withdrawn:
            status = f"withdrawn {summary.withdrawn.at:%Y-%m-%d}: {summary.withdrawn.reason}"
        elif summary.passed:
            status = "passed, not champion"
        elif summary.passed is None:
            status = "no gate decision recorded"
        else:
            status = summary.reason or "rejected"
        # Versions from before the test split have validation figures only.
        metrics = summary.metrics
        accuracy = metrics.get("test_accuracy", metrics.get("val_accuracy", float("nan")))
        loss = metrics.get("test_loss", metrics.get("val_loss", float("nan")))
        f1 = metrics.get("test_macro_f1", metrics.get("val_macro_f1", float("nan")))
        marker = "*" if summary.is_champion else " "
        images = "-" if summary.test_images is None else str(summary.test_images)
        print(
            f"{marker} {summary.version:<24} {accuracy:>13.4f} {loss:>9.4f} {f1:>8.4f} "
            f"{images:>11}  {shorten(status, 70)}"
        )
    return 0


def promote_command(settings: Settings, arguments: argparse.Namespace) -> int:
    with leased_registry(settings, arguments, "promote") as registry:
        try:
            etag = registry.read_champion()[1]
        except RegistryCorrupt:
            if not arguments.repair:
                raise
            etag = None  # replaced from the history's newest entry, by compare-and-swap
        else:
            if arguments.repair and etag is not None:
                print("champion.json is readable: promoting as without --repair")
        champion = registry.promote(
            arguments.version,
            f"manual by {getpass.getuser()}",
            f"override: {arguments.reason}",
            etag,
            repair=arguments.repair,
            override=True,
        )
    print(f"Version {champion.version} is now champion of '{registry.model_name}' (override)")
    if champion.previous and champion.previous[0].version != champion.version:
        print(
            f"  The work of {champion.previous[0].version} is withdrawn: nightly runs do not train "
            "it again unless forced"
        )
    print(f"  served at {registry.store.describe(registry.serving_location(champion))}")
    return 0


def predict_command(settings: Settings, arguments: argparse.Namespace) -> int:
    """One line per image: its class and probability, as the exported model serves it."""
    registry = open_registry(settings, arguments)
    version = arguments.model_version
    if version is None:
        champion, _ = registry.read_champion()
        if champion is None:
            raise BadInput(f"'{registry.model_name}' has no champion yet: pass --version")
        version = champion.version
    start_tensorflow(settings.tensorflow_logs)
    from retrainer.serving import download_serving_model, predict_files

    saved_model = download_serving_model(registry, version, settings.cache.champions_dir)
    predictions = predict_files(saved_model, arguments.images)
    failed = 1 if any(prediction.problem for prediction in predictions) else 0
    if arguments.json:
        images = [
            {"image": str(prediction.image), "problem": prediction.problem}
            if prediction.problem
            else {
                "image": str(prediction.image),
                "class": prediction.class_name,
                "probability": prediction.probability,
            }
            for prediction in predictions
        ]
        answer = {"model_name": registry.model_name, "version": version, "images": images}
        print(json.dumps(answer, indent=2))
        return failed
    for prediction in predictions:
        if prediction.problem:
            print(f"{prediction.image}: {prediction.problem}")
        else:
            print(f"{prediction.image}: {prediction.class_name} ({prediction.probability:.3f})")
    print(f"(version {version} of '{registry.model_name}')")
    return failed


def rollback_command(settings: Settings, arguments: argparse.Namespace) -> int:
    with leased_registry(settings, arguments, "rollback") as registry:
        champion = registry.rollback(
            f"manual by {getpass.getuser()}", arguments.reason, repair=arguments.repair
        )
    print(f"Rolled back: version {champion.version} is champion of '{registry.model_name}' again")
    print(
        "  The rolled-back work is withdrawn: nightly runs do not train it again until the data, "
        "the parameters or the code change (or a run is forced)"
    )
    print(f"  served at {registry.store.describe(registry.serving_location(champion))}")
    return 0


def repair_command(settings: Settings, arguments: argparse.Namespace) -> int:
    with leased_registry(settings, arguments, "repair") as registry:
        champion = registry.restore_champion()
    print(
        f"Restored champion.json of '{registry.model_name}' from its history: version "
        f"{champion.version} (change {champion.serving_number})"
    )
    return 0


def verify_command(settings: Settings, arguments: argparse.Namespace) -> int:
    """One line per problem; exit 0 when the champion (and with --all every version) is whole."""
    registry = open_registry(settings, arguments)
    problems: list[str] = []
    try:
        champion, etag = registry.read_champion()
        record = registry.champion_record(champion, etag) if champion and etag else None
    except BadInput as error:
        champion, record, problems = None, None, [str(error)]
    versions = registry.published_versions() if arguments.all else []
    if record is not None and record.version not in versions:
        versions.append(record.version)
    for version in versions:
        problems += registry.verify_version(version)
    if champion is not None and record is not None:
        problems += registry.serving_problems(champion)
    if arguments.json:
        answer = {
            "model_name": registry.model_name,
            "champion_version": champion.version if champion else None,
            "versions_verified": versions,
            "problems": problems,
        }
        print(json.dumps(answer, indent=2))
        return 1 if problems else 0
    for problem in problems:
        print(problem)
    if not problems:
        named = f"champion {champion.version}" if champion else "no champion"
        print(f"'{registry.model_name}': {named}; {len(versions)} version(s) verified, no problem")
    return 1 if problems else 0


def gc_command(settings: Settings, arguments: argparse.Namespace) -> int:
    from retrainer.gc import collect_garbage

    with leased_registry(settings, arguments, "gc") as registry:
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
    check_before_work(settings)
    from prefect.schedules import Cron

    from flows.retrain import retrain
    from flows.schedule import nightly_schedule

    nightly = nightly_schedule()
    cron = arguments.cron or nightly["cron"]
    timezone = arguments.timezone or nightly["timezone"]
    print(f"Serving 'retrain' on '{cron}' ({timezone}); Ctrl-C stops")
    retrain.serve(
        name="nightly-local",
        schedules=[Cron(cron, timezone=timezone)],
        tags=["retrainer", "nightly"],
        limit=1,
        global_limit=1,  # one run at a time across every process serving it, not just this one
    )
    return 0


def notify_command(settings: Settings, arguments: argparse.Namespace) -> int:
    from flows.notifications import create_notification_automations

    for name in create_notification_automations(arguments.block):
        print(f"Automation ready: {name}")
    return 0


def doctor_command(settings: Settings, arguments: argparse.Namespace) -> int:
    from retrainer.doctor import benchmark_findings, examine_node, gpus_seen

    start_tensorflow(settings.tensorflow_logs)
    findings = examine_node(settings)
    if arguments.benchmark:
        findings += benchmark_findings(settings, gpus_seen())
    for finding in findings:
        print(f"{'MISSING ' if finding.missing else ''}{finding.topic}: {redact(finding.said)}")
    missing = [finding.topic for finding in findings if finding.missing]
    if missing:
        print(f"Not ready for the nightly job: {', '.join(missing)}")
        return 1
    print("Ready for the nightly job")
    return 0


def demo_command(settings: Settings, arguments: argparse.Namespace) -> int:
    """What the product is for, in three nightly runs on the embedded default."""
    from flows.retrain import run_here
    from retrainer.demo import run_demo_nights

    check_location("RETRAINER_STORE_URL", settings.store_url)
    run_demo_nights(settings, lambda parameters: run_here(parameters).result())
    return 0


def seed_demo_command(settings: Settings, arguments: argparse.Namespace) -> int:
    from retrainer.demo import seed_demo_data

    store = open_store(settings.store_url)
    check_location("RETRAINER_STORE_URL", settings.store_url)
    written = seed_demo_data(store, DEMO_DATA)
    print(f"Demo data at {store.describe(DEMO_DATA)}: {written} images added")
    return 0


# An installed wheel carries flows/ and tasks/ (and prefect.yaml) in here, so that it claims no
# generic top-level name in site-packages; a checkout or an image has them beside retrainer/.
BUNDLED_PIPELINE = Path(__file__).resolve().parent / "_pipeline"


def make_pipeline_importable() -> None:
    """Let the commands that start a flow import `flows` and `tasks`, from wherever they are."""
    if BUNDLED_PIPELINE.is_dir() and str(BUNDLED_PIPELINE) not in sys.path:
        sys.path.append(str(BUNDLED_PIPELINE))  # after the checkout's own, which wins


# Prefect's ephemeral API waits 20 s by default; on a busy machine (a load of 4x the cores) it
# timed out in six runs out of six, and 120 s let every one start (FACTS).
EPHEMERAL_STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EPHEMERAL_STARTUP_SECONDS = "120"


def ephemeral_api_timed_out(error: Exception) -> bool:
    return isinstance(error, RuntimeError) and str(error).startswith(
        "Timed out while attempting to connect to ephemeral Prefect API server"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    make_pipeline_importable()
    os.environ.setdefault(EPHEMERAL_STARTUP, EPHEMERAL_STARTUP_SECONDS)
    try:
        return int(arguments.handler(load_settings(), arguments))
    except SettingsError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except (BadInput, PromotionConflict, LeaseHeld) as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 1
    except Exception as error:
        if not ephemeral_api_timed_out(error):
            return unexpected(error)
        problem = (
            f"Prefect's temporary API did not start within {os.environ[EPHEMERAL_STARTUP]} s on "
            f"this machine: raise {EPHEMERAL_STARTUP}, or start a server (prefect server start) "
            "and point PREFECT_API_URL at it"
        )
        if getattr(arguments, "json", False):
            print(json.dumps({"state": "Failed", "message": problem}, indent=2))
        print(f"error: {problem}", file=sys.stderr)
        return 1


def unexpected(error: Exception) -> int:
    """An outage or a bug: the whole story, but never a credential."""
    trace = "".join(traceback.format_exception(error))
    print(redact(trace), file=sys.stderr, end="")
    print(f"error: {redact(f'{type(error).__name__}: {error}')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
