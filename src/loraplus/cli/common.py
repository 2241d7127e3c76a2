"""What every subcommand shares: exit codes, the bad-input error, number formatting."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error (a bug, or a failure outside the user's input)
EXIT_USAGE = 2  # bad input, as argparse uses
EXIT_DIVERGED = 3  # the loss went NaN/inf: lower lr or ratio

Subparsers = Any  # argparse's _SubParsersAction (a private type)


class CLIError(ValueError):
    """Bad input found by a subcommand: printed as `error: <message>`, exit status 2."""


def fmt(value: Any) -> str:
    """A metric for a table: 4 decimals for floats, as-is otherwise."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
