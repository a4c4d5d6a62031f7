"""Checks run before any work: both stores reachable and usable with these settings."""

from __future__ import annotations

from retrainer.errors import SettingsError
from retrainer.records import PreparationSpec
from retrainer.settings import DEFAULT_MODEL_FACTORY, Settings
from retrainer.storage import LocalStore, StoreError, open_store
from retrainer.tensorflow_runtime import start_tensorflow
from retrainer.user_code import code_identity


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


def check_user_code(settings: Settings, class_count: int) -> None:
    """A user's model factory and callbacks, imported and called once on the real input size and
    the listing's classes, before any download: a typo, a wrong output layer or a compile that
    cannot train is a one-line error now, not after preparation. It runs after the skip decision,
    so a night with nothing new never imports TensorFlow for it.

    The built-in model is left out: it is tested here, and the check costs TensorFlow's start-up.
    """
    if settings.model_factory == DEFAULT_MODEL_FACTORY and settings.callbacks is None:
        return
    start_tensorflow(settings.tensorflow_logs)
    from retrainer.data.image import input_shape
    from retrainer.models import build_from_factory, user_callbacks

    if settings.model_factory != DEFAULT_MODEL_FACTORY:
        shape = input_shape(PreparationSpec.of(settings))
        build_from_factory(settings.model_factory, shape, max(class_count, 2), settings)
    user_callbacks(settings.callbacks)


def check_device(settings: Settings) -> None:
    """A run that must have a GPU and has none stops now, with TensorFlow's reason."""
    if settings.device == "gpu":
        from retrainer.devices import detect_devices

        start_tensorflow(settings.tensorflow_logs)
        detect_devices(settings.mixed_precision, settings.device)


def check_before_work(settings: Settings) -> None:
    """Every check that needs neither the data nor TensorFlow's start-up for the user's code: the
    device, the stores, and that the user's modules are there (found, not imported)."""
    check_device(settings)
    check_stores(settings)
    code_identity(settings.model_factory, settings.callbacks)
