"""The project's exceptions. Imports nothing of the project.

Every message names the thing (file, field, class), what was expected, what was found, and the fix;
the CLI prints it as one ``error:`` line and exits non-zero.
"""


class AutomlError(Exception):
    """Base of every error the user can fix; the CLI exits with ``exit_code``."""

    exit_code = 2


class DataError(AutomlError):
    """A dataset path, file or array is missing, malformed or unusable."""


class ConfigError(AutomlError, ValueError):
    """A parameter, flag or recipe field has a value outside its constraint."""


class WeightsUnavailableError(AutomlError):
    """Pretrained weights cannot be loaded from the cache, a local path or the network."""

    exit_code = 3


class MissingDependencyError(AutomlError, ImportError):
    """An optional package is not installed; the message holds the install command."""

    exit_code = 3


class StoreError(AutomlError):
    """The store folder is unusable (not writable, written by an incompatible version)."""


class TooLargeError(DataError):
    """An upload exceeds a size or count limit (files, bytes, unpacked bytes, compression ratio); the
    message names the file, the limit and its value. The service answers it with HTTP 413."""
