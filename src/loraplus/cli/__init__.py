"""The `loraplus` command line: one module per subcommand, each with `add_parser` and `run`.

To add a subcommand, write a module with `add_parser(subparsers)` (which calls
`set_defaults(func=run)`) and `run(args) -> int`, and list it in COMMANDS. Subcommand parsers are
built from their config dataclass by one parser class (`loraplus._config.DataclassParser`).
`main` turns ValueError, FileNotFoundError and ImportError into one line `error: <message>` and
exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence

if not {"-v", "--verbose"} & set(sys.argv[1:]):
    # bitsandbytes (imported with peft, below) warns about an optional CPU kernel package
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # deepspeed (imported by the Trainer when installed) warns on every machine without a GPU
    # that it "set the accelerator to CPU"; its logger resets its own level, so a filter
    logging.getLogger("DeepSpeed").addFilter(lambda rec: rec.filename != "real_accelerator.py")

from loraplus._config import DataclassParser
from loraplus.cli import demo, diagnose, experiment, merge, study, sweep, train, tune
from loraplus.cli.common import EXIT_USAGE, CLIError

__all__ = ["COMMANDS", "CLIError", "build_parser", "main"]

COMMANDS = (train, demo, diagnose, merge, sweep, tune, study, experiment)


def build_parser() -> argparse.ArgumentParser:
    """The `loraplus` parser with every subcommand in COMMANDS."""
    from loraplus import __version__

    parser = DataclassParser(
        prog="loraplus",
        description="LoRA+ fine-tuning: LoRA's B matrices train at ratio x the lr of A.",
    )
    parser.add_argument("--version", action="version", version=f"loraplus {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show transformers' info and warnings"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=DataclassParser
    )
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `loraplus` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with _quiet(not {"-v", "--verbose"} & set(argv)):  # quiet imports too, not only the run
        return _parse_and_run(argv)


def _parse_and_run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help or --version
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except ValueError as err:  # a usage error, one line
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status: int = args.func(args)
        return status
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Without --verbose: transformers' errors only; no loading bars, FutureWarnings, bnb notes."""
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # bitsandbytes (imported by peft) logs a warning about an optional CPU kernel package.
    bnb_log = logging.getLogger("bitsandbytes")
    bnb_level = bnb_log.level
    bnb_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        bnb_log.setLevel(bnb_level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
