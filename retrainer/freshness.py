"""Is there anything new to learn? The work key names a training run by everything that shapes it.

Same data, same parameters, same code: same work key. A run whose work key equals the champion's
skips training; checkpoints are filed under it, so a rerun of the same work resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

from retrainer.records import ChampionRecord, Publication, Work
from retrainer.registry import ModelRegistry
from retrainer.settings import TrainingConfig
from retrainer.user_code import code_identity


@functools.cache
def code_version() -> str:
    """The image's RETRAINER_GIT_COMMIT, else the checkout's HEAD, else "unknown" (read once):
    where the code came from, for the manifest; the work key uses the code itself."""
    if commit := os.environ.get("RETRAINER_GIT_COMMIT"):
        return commit
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return answer.stdout.strip()


def identify_work(data_fingerprint: str, config: TrainingConfig) -> Work:
    """The work of training `config` on this data with this code, and its key.

    The code is what shapes the model (the product's Python files, the user's factory and
    callbacks, TensorFlow's and Keras' versions), not the commit: a commit that changes only the
    README or the deployment files is the same work, and an operator's rollback of it sticks.
    """
    code = code_identity(config.model_factory, config.callbacks)
    identity = {
        "data": data_fingerprint,
        "parameters": config.model_dump(mode="json"),
        "code": code.model_dump(mode="json"),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Work(
        key=key,
        data_fingerprint=data_fingerprint,
        config=config,
        code=code,
        code_version=code_version(),
    )


def skip_if_unchanged(
    registry: ModelRegistry, champion: ChampionRecord | None, work: Work
) -> Publication | None:
    """A "skipped" outcome when this very work made the champion, was rejected, or made a version
    an operator withdrew (rolled back, or demoted by promoting another by hand), else None.

    Training the same data with the same parameters and code again would give the same outcome:
    a rejected work is not retrained every night on the GPU, and a person's rollback sticks.
    """
    until = (
        "training skipped until the data, the parameters or the code change; run with --force "
        "to retrain anyway"
    )
    if champion is not None and champion.work_key == work.key:
        message = (
            f"nothing changed since champion {champion.version} (same data, parameters and "
            "code): training skipped; run with --force to retrain anyway"
        )
    elif (record := registry.read_work_record(work.key)) is None:
        return None
    elif record.status == "rejected":
        message = (
            f"this exact work (same data, parameters and code) was trained on "
            f"{record.finished_at:%Y-%m-%d} as version {record.version} and {record.reason}: "
            f"{until}"
        )
    elif record.status == "withdrawn":
        message = (
            f"this exact work (same data, parameters and code) made version {record.version}, "
            f"which was taken out of production on {record.finished_at:%Y-%m-%d} "
            f"({record.reason}): {until}"
        )
    else:
        return None
    return Publication(
        status="skipped",
        model_name=registry.model_name,
        version=None,
        version_url=None,
        files=[],
        champion_version=champion.version if champion else None,
        message=message,
    )
