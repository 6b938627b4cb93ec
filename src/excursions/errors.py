"""The one exception type users see: a message that names the problem and the fix, no traceback."""


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
