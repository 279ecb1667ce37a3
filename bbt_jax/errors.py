"""User-facing errors: one clear line, exit code 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (file, flag or value), reported in one line."""

    exit_code = 2
