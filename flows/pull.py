"""The deployment's pull step: where the worker finds the code, and which commit it is.

Prefect runs pull steps in the flow run's process, in a temporary directory, so a process worker
started in a checkout does not run "in" it: the code is found where this package is installed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from retrainer.errors import redact


def locate_code() -> dict[str, str]:
    """`{"directory": ...}` for Prefect's set_working_directory step.

    RETRAINER_GIT_URL set: a fresh clone at RETRAINER_GIT_REF (a branch or tag, default main, or
    a full commit hash to pin the code), whose commit becomes the run's code version (it
    overrides an image's RETRAINER_GIT_COMMIT: the code that runs is the clone). Else
    RETRAINER_CODE_DIR, else the checkout or image this package is installed from.
    """
    if url := os.environ.get("RETRAINER_GIT_URL"):
        directory = tempfile.mkdtemp(prefix="retrainer-code-")
        fetch_code(url, os.environ.get("RETRAINER_GIT_REF", "main"), directory)
        os.environ["RETRAINER_GIT_COMMIT"] = git(directory, "rev-parse", "HEAD")
        return {"directory": directory}
    if code_dir := os.environ.get("RETRAINER_CODE_DIR"):
        return {"directory": code_dir}
    return {"directory": str(Path(__file__).resolve().parent.parent)}


def fetch_code(url: str, ref: str, directory: str) -> None:
    """Only the one commit the run needs: a branch's or tag's tip, or the pinned commit."""
    git(directory, "init", "--quiet")
    git(directory, "fetch", "--quiet", "--depth", "1", url, ref)
    git(directory, "checkout", "--quiet", "--detach", "FETCH_HEAD")


def git(directory: str, *arguments: str) -> str:
    """Run git in `directory`; a failure is one error whose text carries no credential (a token
    in RETRAINER_GIT_URL would otherwise reach the run's log in git's own message)."""
    answer = subprocess.run(
        ["git", "-C", directory, *arguments], capture_output=True, text=True, check=False
    )
    if answer.returncode != 0:
        command = redact(" ".join(["git", *arguments]))
        raise RuntimeError(f"{command} failed: {redact(answer.stderr.strip())}")
    return answer.stdout.strip()
