"""The Prefect events a run emits about its model: named once, for emitter and automations.

`retrainer.model.promoted`, `.rejected` or `.conflict`, about the resource `retrainer.model.<name>`.
"""

from __future__ import annotations

EVENT_PREFIX = "retrainer.model."
REJECTED_EVENT = EVENT_PREFIX + "rejected"


def model_event(outcome: str) -> str:
    """The event of a publication's outcome: promoted, rejected or conflict."""
    return EVENT_PREFIX + outcome


def model_resource(model_name: str) -> dict[str, str]:
    """The resource an event is about: the model, by name."""
    return {"prefect.resource.id": EVENT_PREFIX + model_name, "prefect.resource.name": model_name}
