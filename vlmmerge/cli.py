"""Command-line entry point: wires the subcommands of `vlmmerge/commands/<name>.py` (each exposes
`register(subparsers)`) into one parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Order is the order shown in `vlmmerge --help`. Helpers add their command's module name here.
COMMANDS: tuple[str, ...] = ("inspect", "merge", "eval", "evolve", "tune", "demo", "zoo")

DESCRIPTION = (
    "Merge a vision-language model with specialist language models (or LLMs with LLMs) from "
    "mergekit-style YAML recipes, evolve recipes (CMA-ES, NSGA-II, data-flow paths), learn merge coefficients "
    "by gradient, and score the results offline. For VLM + LLM only the language side merges; the vision "
    "encoder and projector are kept from the host VLM. "
    "Start with `vlmmerge demo`, or `vlmmerge merge RECIPE.yaml OUT_DIR`."
)


def build_parser() -> argparse.ArgumentParser:
    from vlmmerge import __version__

    parser = argparse.ArgumentParser(prog="vlmmerge", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"vlmmerge {__version__}")
    debug_help = "on error, show the full traceback instead of a one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vlmmerge.commands.{name}").register(sub)
    for command in sub.choices.values():
        # Also accepted after the command; SUPPRESS keeps a top-level --debug from being reset.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line messages from libraries joined with '; ')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


_teardown_free = False  # the last command's result is all on disk: nothing left for exit handlers


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
    global _teardown_free
    _teardown_free = bool(getattr(args, "teardown_free", False))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except (VlmMergeError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """The console script: `main`, and after a command whose result is all on disk (merge) an exit
    that skips the interpreter's teardown: torch's and inductor's finalizers take ~2 s per process,
    a tenth of a 1B merge. Other commands exit normally (their temporary folders, Ray)."""
    code = main()
    if not _teardown_free:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    run()
