"""What the tasks know of the Prefect run they are in."""

from __future__ import annotations

from prefect.runtime import flow_run


def current_run_id() -> str:
    """The flow run's id: names the run's version, its lease and its local folder."""
    return str(flow_run.id or "local")
