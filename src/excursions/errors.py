"""The one exception type users see: a message that names the problem and the fix, no traceback."""

from __future__ import annotations

import errno
import sqlite3


class UserError(Exception):
    """Bad input (config, flag, file, dataset row): the CLI prints the message and exits with `exit_code`.

    Raise it before any work starts where possible, so that nothing is half-written.
    """

    exit_code = 2


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (or its type's name): enough for one clear line.

    >>> first_line(OSError("no such revision\\nsee the docs")), first_line(ValueError())
    ('no such revision', 'ValueError')
    """
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class ConfigError(UserError):
    """A config value that is unknown, of the wrong type or impossible; `field` is its dotted path."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"config: {field}: {message}" if field else f"config: {message}")

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its field path prefixed by an enclosing section."""
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


class Diverged(UserError):
    """A training loss, gradient or the weights went NaN / inf: the run stopped before saving anything from it."""

    exit_code = 3


class UnitsFailed(UserError):
    """Some units of a study failed (or waited on one that did); the others ran and the report was written."""

    exit_code = 1


# A full disk, a quota, a read-only or foreign directory: the output cannot be written, whatever the input.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def write_error(err: BaseException) -> UserError | None:
    """A write that failed for lack of space or permission, as one clear line (None for any other error).

    >>> str(write_error(OSError(errno.ENOSPC, "No space left on device", "runs/x/model.safetensors"))).split(",")[0]
    'cannot write runs/x/model.safetensors: No space left on device; free some space'
    >>> str(write_error(PermissionError(errno.EACCES, "Permission denied", "/ro/s"))).split(",")[0]
    'cannot write /ro/s: Permission denied; choose a writable --out'
    >>> str(write_error(RuntimeError("I/O error: No space left on device (os error 28)"))).split(";")[0]
    'cannot write I/O error: No space left on device (os error 28)'
    >>> write_error(ValueError("bug")) is None
    True
    """
    text = str(err)
    if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
        what = f"{err.filename}: {err.strerror}" if err.filename else err.strerror or first_line(err)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    elif isinstance(err, sqlite3.OperationalError) and ("disk is full" in text or "readonly" in text):
        what, full = f"the study database: {first_line(err)}", "disk is full" in text
    elif "No space left on device" in text or "os error 28" in text:  # wrapped by a library (safetensors, torch.save)
        what, full = first_line(err), True
    else:
        return None
    fix = "free some space" if full else "choose a writable --out"
    return UserError(f"cannot write {what}; {fix}, then run the same command again (finished work is kept, nothing "
                     "was left half-written)")
