"""Checks run before any work: both stores reachable and usable with these settings."""

from __future__ import annotations

from retrainer.errors import SettingsError
from retrainer.settings import Settings
from retrainer.storage import LocalStore, StoreError, open_store


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
