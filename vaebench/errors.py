"""Errors a user can fix. The CLI prints these as one line and exits 2; anything else is a bug."""


class VaebenchError(Exception):
    """A mistake in the user's input or environment, reported without a traceback."""

    exit_code = 2


class ConfigError(VaebenchError):
    """The config file or an override is invalid."""


class UnknownComponentError(ConfigError):
    """A component name that no registry knows."""


class DataError(VaebenchError):
    """A data file is missing, unreadable or corrupt."""


class RunFailed(VaebenchError):
    """A run stopped on its own (e.g. its loss became NaN); its folder says why."""

    exit_code = 1


def reason(e: BaseException) -> str:
    """A failure as one status line: a user's mistake as its own words, anything else with its type."""
    return str(e) if isinstance(e, VaebenchError) else f"{type(e).__name__}: {e}"
