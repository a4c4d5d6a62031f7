"""Checks run before any work: both stores reachable and usable with these settings."""

from __future__ import annotations

from retrainer.errors import SettingsError
from retrainer.records import PreparationSpec
from retrainer.settings import DEFAULT_MODEL_FACTORY, Settings
from retrainer.storage import LocalStore, StoreError, open_store
from retrainer.tensorflow_runtime import start_tensorflow


def check_location(name: str, url: str, must_exist: bool = False) -> None:
    """Raise SettingsError naming the setting `name` when `url` cannot be used; write nothing."""
    store = open_store(url)
    try:
        store.check()
    except StoreError as error:
        raise SettingsError(f"{name}: {error}") from None
    if must_exist and isinstance(store, LocalStore) and not store.root.is_dir():
        raise SettingsError(f"{name}: folder {store.root} does not exist")


def check_stores(settings: Settings) -> None:
    # The model store is created on first use; a data folder that is not there is a typo.
    check_location("RETRAINER_STORE_URL", settings.store_url)
    check_location("RETRAINER_DATA_URL", settings.resolved_data_url, must_exist=True)
    try:
        open_store(settings.store_url).prove_conditional_writes()
    except StoreError as error:
        raise SettingsError(f"RETRAINER_STORE_URL: {error}") from None


def check_model_factory(settings: Settings) -> None:
    """A user's model factory is imported and built once on the real input size, before any
    download: a typo or a wrong output layer is a one-line error now, not after preparation.

    The built-in model is left out: it is tested here, and the check costs TensorFlow's start-up.
    """
    if settings.model_factory == DEFAULT_MODEL_FACTORY:
        return
    start_tensorflow(settings.tensorflow_logs)
    from retrainer.data.image import input_shape
    from retrainer.models import build_from_factory

    shape = input_shape(PreparationSpec.of(settings))
    build_from_factory(settings.model_factory, shape, num_classes=3)


def check_device(settings: Settings) -> None:
    """A run that must have a GPU and has none stops now, with TensorFlow's reason."""
    if settings.device == "gpu":
        from retrainer.devices import detect_devices

        start_tensorflow(settings.tensorflow_logs)
        detect_devices(settings.mixed_precision, settings.device)


def check_before_work(settings: Settings) -> None:
    """Every check that needs no data: the device, the stores, then the model factory."""
    check_device(settings)
    check_stores(settings)
    check_model_factory(settings)
