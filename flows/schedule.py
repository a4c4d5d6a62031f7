"""The nightly schedule, stated once: the `nightly` deployment's in prefect.yaml.

`retrainer serve` runs the flow on the same schedule from one machine; prefect.yaml sits beside the
flows in a checkout, an image and the installed wheel alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOYMENT_FILE = Path(__file__).resolve().parent.parent / "prefect.yaml"


def nightly_schedule() -> dict[str, Any]:
    """The first schedule of the `nightly` deployment: its cron, time zone and whether active."""
    config = yaml.safe_load(DEPLOYMENT_FILE.read_text())
    (nightly,) = (item for item in config["deployments"] if item["name"] == "nightly")
    return dict(nightly["schedules"][0])
