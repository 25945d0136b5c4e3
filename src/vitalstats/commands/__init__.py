"""One module per ``vitalstats`` subcommand (``register(subparsers)`` in each)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

# Order is the order shown by ``vitalstats --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "doctor", "report", "watch", "runs", "lint", "export", "propagate",
)  # fmt: skip


class CommandError(Exception):
    """An error the user can act on: printed as one line, exit code 2, no traceback."""


def check_output_file(path: Path, option: str = "--out") -> None:
    """CommandError unless ``path`` can be written as a file (its directory exists)."""
    if path.is_dir():
        raise CommandError(
            f"{option} {path} is a directory; give a file name such as {path / 'report.html'}"
        )
    if not path.parent.exists():
        raise CommandError(f"{option} {path}: directory {path.parent} does not exist")


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn a ``vitalstats.store.StoreError`` (missing, foreign or newer store; unknown run)
    into a one-line ``CommandError``."""
    from vitalstats.store import StoreError

    try:
        yield
    except StoreError as error:
        raise CommandError(str(error).splitlines()[0] if str(error) else repr(error)) from None
