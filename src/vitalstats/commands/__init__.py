"""One module per ``vitalstats`` subcommand (``register(subparsers)`` in each)."""

from __future__ import annotations

# Order is the order shown by ``vitalstats --help``.
COMMAND_MODULES: tuple[str, ...] = ()


class CommandError(Exception):
    """An error the user can act on: printed as one line, exit code 2, no traceback."""
