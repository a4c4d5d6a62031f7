"""Is there anything new to learn? The work key names a training run by everything that shapes it.

Same data, same parameters, same code: same work key. A run whose work key equals the champion's
skips training; checkpoints are filed under it, so a rerun of the same work resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from retrainer.records import Publication
from retrainer.registry import ModelRegistry


def code_version() -> str:
    """The image's RETRAINER_GIT_COMMIT, else the checkout's HEAD, else "unknown"."""
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


def work_key(data_fingerprint: str, parameters: dict[str, Any]) -> str:
    identity = {"data": data_fingerprint, "parameters": parameters, "code": code_version()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def skip_if_unchanged(registry: ModelRegistry, key: str) -> Publication | None:
    """A "skipped" outcome when the champion came from this very work, else None."""
    champion, _ = registry.read_champion()
    if champion is None:
        return None
    manifest = registry.read_json(champion.version, "manifest.json")
    if manifest.get("work_key") != key:
        return None
    return Publication(
        status="skipped",
        model_name=registry.model_name,
        version=None,
        version_url=None,
        files=[],
        champion_version=champion.version,
        message=f"nothing changed since champion {champion.version} (same data, parameters and "
        "code): training skipped; pass force to retrain anyway",
    )
