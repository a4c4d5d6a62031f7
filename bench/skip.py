"""A night with nothing new, with the built-in model and with a user's model factory, side by side
in one run: each a fresh `retrainer run` after a first night trained the same work. The user's
factory is `examples/my_models/factories.py:compiled_cnn` at 224 px, as a notebook's would be. The
code before the factory check moved after the skip (BASELINE_COMMIT, a git worktree) runs the same
two nights with the user's factory.

    make bench  (or: .venv/bin/python -m bench.skip) [--images 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import jpeg_images, write_tree

# The last commit that built a user's factory before the skip decision.
BASELINE_COMMIT = "227bd92"
REPOSITORY = Path(__file__).resolve().parent.parent
USER_FACTORY = "my_models.factories:compiled_cnn"
# Runs the CLI and says, last on stderr, whether the process imported TensorFlow.
CLI_SAYING_IMPORTS = (
    "import sys, runpy\n"
    "sys.argv = ['retrainer', 'run', '--json']\n"
    "try:\n"
    "    runpy.run_module('retrainer.cli', run_name='__main__')\n"
    "finally:\n"
    "    print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
)


def night(code: Path, work: Path, model: str, factory: str | None) -> tuple[float, str, bool]:
    """One `retrainer run` in a fresh process: seconds, outcome, whether TensorFlow came in."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(code), str(REPOSITORY / "examples")]),
        "RETRAINER_STORE_URL": str(work / "store"),
        "RETRAINER_DATA_URL": str(work / "images"),
        "RETRAINER_CACHE_DIR": str(work / f"cache-{model}"),
        "RETRAINER_MODEL_NAME": model,
        "RETRAINER_EPOCHS": "1",
        "RETRAINER_IMAGE_SIZE": "224" if factory else "32",
        "RETRAINER_GATE__ACCURACY__THRESHOLD": "0",
    }
    if factory:
        env["RETRAINER_MODEL_FACTORY"] = factory
    started = time.perf_counter()
    answer = subprocess.run(
        [sys.executable, "-c", CLI_SAYING_IMPORTS],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    try:
        outcome = str(json.loads(answer.stdout)["state"])
    except (json.JSONDecodeError, KeyError):
        print(answer.stdout[-2000:], answer.stderr[-3000:], file=sys.stderr)
        outcome = f"exit {answer.returncode}"
    return seconds, outcome, "tensorflow imported: True" in answer.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-skip-"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_HOME"] = str(work / "prefect")  # one database, created by the first run
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    baseline = work / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(baseline), BASELINE_COMMIT],
        cwd=REPOSITORY,
        check=True,
        capture_output=True,
    )
    try:
        write_tree(work / "images", jpeg_images(arguments.images, classes=4, size=64))
        cases = [
            ("built-in model", REPOSITORY, "builtin", None),
            ("user factory", REPOSITORY, "user", USER_FACTORY),
            (f"user factory, code of {BASELINE_COMMIT}", baseline, "user-old", USER_FACTORY),
        ]
        rows = []
        for label, code, model, factory in cases:
            first = night(code, work, model, factory)
            skipped = [night(code, work, model, factory) for _ in range(arguments.repeats)]
            rows.append((label, first, skipped))
        builtin = statistics.median(seconds for seconds, _, _ in rows[0][2])
        print(f"{arguments.images} images in 4 classes, local folder store; skipped nights")
        print(
            f"| model | first night | skipped night (median of {arguments.repeats}) | "
            "vs built-in | TensorFlow imported when skipping |"
        )
        print("|---|---|---|---|---|")
        for label, (first_seconds, first_outcome, _), skipped in rows:
            median = statistics.median(seconds for seconds, _, _ in skipped)
            outcomes = {outcome for _, outcome, _ in skipped}
            imported = any(flag for _, _, flag in skipped)
            print(
                f"| {label} | {first_seconds:.1f} s ({first_outcome}) | {median:.1f} s "
                f"({', '.join(sorted(outcomes))}) | {median / builtin:.2f} | "
                f"{'yes' if imported else 'no'} |"
            )
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)],
            cwd=REPOSITORY,
            capture_output=True,
        )


if __name__ == "__main__":
    main()
