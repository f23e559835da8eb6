"""Errors a user can fix. The CLI prints these as one line and exits 2; anything else is a bug.

An OSError from the user's environment (a full disk, a read-only folder, a path that is a file)
is one of those too: ``describe_os_error`` says it as one line that names the path.
"""

import errno


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


def describe_os_error(e: OSError) -> str:
    """A file-system error as one line that names the path and says what to do."""
    path = e.filename if e.filename is not None else "?"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {path}; free some space, then run the same command again"
    if code == errno.EROFS:
        return f"read-only file system: cannot write {path}; use a writable folder (e.g. another --out)"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}; use a folder you can write to (e.g. another --out) or fix its permissions"
    if code in (errno.ENOTDIR, errno.EEXIST) or isinstance(e, (NotADirectoryError, FileExistsError)):
        return f"{path} (or a folder above it) is a file, not a folder; choose another --out or move the file"
    if code == errno.EISDIR:
        return f"{path} is a folder where a file was expected; move it away"
    return f"{e.strerror or type(e).__name__}: {path}"


def reason(e: BaseException) -> str:
    """A failure as one status line: a user's mistake as its own words, anything else with its type."""
    if isinstance(e, VaebenchError):
        return str(e)
    if isinstance(e, OSError) and e.errno is not None:
        return describe_os_error(e)
    return f"{type(e).__name__}: {e}"
