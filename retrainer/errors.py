"""The errors a person must act on. Anything else (an outage, a preempted worker) is retried."""

from __future__ import annotations

import re

# user:password@ (or key:secret@) inside any URL, whatever its scheme.
_CREDENTIALS_IN_URL = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str) -> str:
    """The text with credentials inside URLs replaced by `***`: safe for messages and logs."""
    return _CREDENTIALS_IN_URL.sub(r"\g<scheme>***@", text)


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
