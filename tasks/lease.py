"""Hold the model's lease for the whole run, so no other run of this model can overlap it; the
tasks write to the model store only through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from retrainer.lease import LeaseLost, ModelLease
from retrainer.registry import ModelRegistry
from retrainer.settings import Settings
from retrainer.storage import ObjectStore, open_store
from tasks.runtime import current_run_id

# The lease the flow run in this process holds, by model: the tasks run in the flow's process.
_held: dict[str, ModelLease] = {}


@contextmanager
def model_lease(settings: Settings) -> Iterator[ModelLease]:
    lease = ModelLease(
        open_store(settings.store_url),
        settings.model_name,
        run_id=current_run_id(),
        seconds=settings.lease_seconds,
    )
    with lease:
        _held[settings.model_name] = lease
        try:
            yield lease
        finally:
            del _held[settings.model_name]


def model_store(settings: Settings) -> ObjectStore:
    """The model store, whose writes stop as soon as this run may have lost its lease."""
    lease = _held.get(settings.model_name)
    if lease is None:
        raise LeaseLost(f"this process holds no lease of '{settings.model_name}': nothing written")
    return lease.guard(open_store(settings.store_url))


def model_registry(settings: Settings) -> ModelRegistry:
    """The model's registry, on the model store: every task reaches the registry through here."""
    return ModelRegistry(model_store(settings), settings.model_name)
