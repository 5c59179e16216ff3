"""Command-line entry point. Each subcommand lives in `vlmmerge/commands/<name>.py` and exposes
`register(subparsers)`; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in `vlmmerge --help`. Helpers add their command's module name here.
COMMANDS: tuple[str, ...] = ("inspect", "merge", "eval", "evolve", "demo")


def build_parser() -> argparse.ArgumentParser:
    from vlmmerge import __version__

    parser = argparse.ArgumentParser(prog="vlmmerge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vlmmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vlmmerge.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vlmmerge.errors import VlmMergeError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VlmMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
