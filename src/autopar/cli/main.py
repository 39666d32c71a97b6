"""Entry point of the `autopar` command.

Each subcommand lives in its own module under autopar.cli and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Bad input (InputError) prints one line to stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from autopar.errors import InputError

# Subcommand modules, in the order `autopar --help` lists them.
COMMANDS = ("profile", "estimate", "plan", "run", "demo", "calibrate", "validate")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"autopar: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopar", description="Find, explain and run the fastest way to parallelize a training recipe.")
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
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"autopar: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
