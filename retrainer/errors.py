"""The errors a person must act on. Anything else (an outage, a preempted worker) is retried."""

from __future__ import annotations


class BadInput(ValueError):
    """Something a person must fix (a setting, the data, a registry file): a retry cannot help.

    Prefect tasks retry every failure but this one (tasks/retries.py), and the CLI turns it into
    one line on stderr.
    """


class SettingsError(BadInput):
    """A setting is wrong; the message is one line per bad value and names the variable."""


class DataError(BadInput):
    """The data cannot train a model; the message says what to fix."""


class RegistryCorrupt(BadInput):
    """A registry file cannot be read as what it should be; the message says how to repair it."""
