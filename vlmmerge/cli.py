"""Command-line entry point. Each subcommand lives in `vlmmerge/commands/<name>.py` and exposes
`register(subparsers)`; this module only wires them together."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order shown in `vlmmerge --help`. Helpers add their command's module name here.
COMMANDS: tuple[str, ...] = ("inspect", "merge", "eval", "evolve", "demo", "zoo")


def build_parser() -> argparse.ArgumentParser:
    from vlmmerge import __version__

    parser = argparse.ArgumentParser(prog="vlmmerge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vlmmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vlmmerge.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Back torch's large CPU allocations with transparent huge pages where the kernel allows them
    # on request: a merge allocates and frees many tensors of tens to hundreds of MB, and
    # first-touch page faults on 4 KiB pages otherwise cost as much as the math. Read by torch at
    # its first allocation, so it is set here, in the command-line process only (importing
    # vlmmerge as a library changes nothing). THP_MEM_ALLOC_ENABLE=0 opts out.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
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
