"""Checks run before any work: both stores reachable and usable with these settings."""

from __future__ import annotations

from retrainer.settings import Settings, SettingsError
from retrainer.storage import StoreError, open_store


def check_stores(settings: Settings) -> None:
    """Raise SettingsError naming the setting whose store cannot be used; write nothing."""
    for name, url in (
        ("RETRAINER_STORE_URL", settings.store_url),
        ("RETRAINER_DATA_URL", settings.resolved_data_url),
    ):
        try:
            open_store(url).check()
        except StoreError as error:
            raise SettingsError(f"{name}: {error}") from None
