"""Entry point of the `autopar` command.

Each subcommand lives in its own module under autopar.cli and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Bad input (InputError) prints one line to stderr and exits with code 2; so does any
unexpected exception (the traceback behind `autopar --debug COMMAND`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from autopar.errors import InputError

# Subcommand modules, in the order `autopar --help` lists them.
COMMANDS = ("profile", "estimate", "plan", "run", "demo", "calibrate", "validate", "export")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"autopar: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopar", description="Find, explain and run the fastest way to parallelize a training recipe.")
    parser.add_argument("--debug", action="store_true", help="on an unexpected error, show the full traceback")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"autopar.cli.{name}_cmd").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            if not args.debug:  # library warnings (torch on meta tensors) would break the one-line contract
                warnings.simplefilter("ignore")
            return int(args.func(args) or 0)
    except InputError as err:
        print(f"autopar: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
    except (Exception, RecursionError, MemoryError) as err:  # a bug or an input no check caught: one line, exit 2
        if args.debug:
            raise
        print(f"autopar: error: {args.command}: unexpected {type(err).__name__}: {_short(err)}; "
              "rerun with --debug for the traceback", file=sys.stderr)
        return 2


def _short(err: BaseException, limit: int = 200) -> str:
    """The exception's first line, cut to `limit` characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
