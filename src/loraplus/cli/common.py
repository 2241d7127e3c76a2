"""What every subcommand shares: exit codes, the bad-input error, number formatting, and the
parser of the commands that run many trainings (sweep, tune)."""

from __future__ import annotations

import argparse
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


def study_parser(subparsers: Subparsers, name: str, config: str, **kwargs: Any) -> Any:
    """The parser of `loraplus NAME`: every TrainConfig flag (applied to each run) and those of
    loraplus.sweep's `config` dataclass; `kwargs` go to add_parser (hide, help, ...).

    Without loraplus[sweep] the command still exists and takes the training flags, so that
    running it says which extra to install.
    """
    from loraplus.train import TrainConfig

    configs: list[Any] = [TrainConfig]
    try:
        from loraplus import sweep

        configs.append(getattr(sweep, config))
    except ImportError:
        pass
    parser = subparsers.add_parser(name, dataclass_types=configs, suppress=True, **kwargs)
    if len(configs) == 1:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser
