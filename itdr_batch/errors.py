"""The project's error base class.

Every error that means "the input or configuration cannot be used as given" derives from
``ItdrError``; the CLI prints its message and exits with status 2. Anything else is a bug and keeps
its traceback, so an internal failure never reads like bad input.
"""


class ItdrError(ValueError):
    """Bad input or configuration: the message names the file, column or key and what is wrong."""
