"""The Prefect events a run emits about its model: named once, for emitter and automations."""

from __future__ import annotations

from typing import Literal

Outcome = Literal["promoted", "rejected", "conflict"]

EVENT_PREFIX = "retrainer.model."
PROMOTED_EVENT = EVENT_PREFIX + "promoted"
REJECTED_EVENT = EVENT_PREFIX + "rejected"
CONFLICT_EVENT = EVENT_PREFIX + "conflict"


def model_event(outcome: Outcome) -> str:
    return EVENT_PREFIX + outcome


def model_resource(model_name: str) -> dict[str, str]:
    """The resource an event is about: the model, by name."""
    return {"prefect.resource.id": EVENT_PREFIX + model_name, "prefect.resource.name": model_name}
