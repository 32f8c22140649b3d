"""Errors a user can cause: reported as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, data, command line), reported as one line with exit code 2."""

    prefix = "error"
    exit_code = 2

    def __str__(self) -> str:
        return f"{self.prefix}: {super().__str__()}"


class ConfigError(UserError):
    """An invalid config file, key, value or name."""

    prefix = "config error"


class DataError(UserError):
    """Missing, incomplete or corrupt data (raw downloads or prepared folders)."""

    prefix = "data error"
