"""Errors that the CLI turns into one clear line and exit code 2.

Anything raised as a :class:`UsageError` is the user's to fix (a bad flag, a bad config key, an
unreadable input file); the CLI prints its message alone, with no traceback, and exits 2.
"""


class UsageError(Exception):
    """A usage, configuration or input error: one line, exit 2."""


class ConfigError(UsageError):
    """An error in audit.toml; the message names the file, the key and what was expected."""

    def __init__(self, file: object, key: str, message: str):
        self.file = str(file)
        self.key = key
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


class CatalogBusyError(UsageError):
    """The catalog stayed locked by another process for longer than we were willing to wait."""


class ProbeInputError(Exception):
    """Raised by a probe when the job's models or data do not suit it (recorded as the result's error)."""
