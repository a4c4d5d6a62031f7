"""The deployment's pull step: where the worker finds the code, and which commit it is.

Prefect runs pull steps in the flow run's process, in a temporary directory, so a process worker
started in a checkout does not run "in" it: the code is found where this package is installed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


def locate_code() -> dict[str, str]:
    """`{"directory": ...}` for Prefect's set_working_directory step.

    RETRAINER_GIT_URL set: a fresh clone at RETRAINER_GIT_REF (default main), whose commit becomes
    the run's code version (it overrides an image's RETRAINER_GIT_COMMIT: the code that runs is
    the clone). Else RETRAINER_CODE_DIR, else the checkout or image this package is installed from.
    """
    if url := os.environ.get("RETRAINER_GIT_URL"):
        directory = tempfile.mkdtemp(prefix="retrainer-code-")
        ref = os.environ.get("RETRAINER_GIT_REF", "main")
        git = ["git", "-C", directory]
        subprocess.run(
            ["git", "clone", "--quiet", "--depth", "1", "--branch", ref, url, directory],
            check=True,
        )
        head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True)
        os.environ["RETRAINER_GIT_COMMIT"] = head.stdout.decode().strip()
        return {"directory": directory}
    if code_dir := os.environ.get("RETRAINER_CODE_DIR"):
        return {"directory": code_dir}
    return {"directory": str(Path(__file__).resolve().parent.parent)}
