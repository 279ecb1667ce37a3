"""User-facing errors: one clear line, exit code 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (file, flag or value), reported in one line."""

    exit_code = 2


def run_main(main) -> int:
    """A script's exit code: `main()`'s, or a UserError's as one `error: ...` line on stderr, no traceback
    (experiments/*.py end with `raise SystemExit(run_main(main))`, as the CLI handles its commands)."""
    import sys

    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
