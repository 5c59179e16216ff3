"""`vlmmerge inspect MODEL [--against OTHER ...] [--json]`"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="show a model's components, language mapping and compatibility with other models",
        description="Split a model into vision / projector / embeddings / language / head, show how its "
        "language side maps onto a standalone causal LM, and check each --against model.",
    )
    parser.add_argument("model", help="model folder or hub id")
    parser.add_argument("--against", nargs="+", default=[], metavar="OTHER", help="models to check against MODEL")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmmerge.inspection import inspect_models

    report = inspect_models(args.model, args.against)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        render(report)
    return 0 if all(entry["ok"] for entry in report["against"]) else 1


def render(report: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    kind = "vision-language model" if report["is_vlm"] else "causal LM"
    console.print(
        f"[bold]{report['model']}[/bold]: {report['architecture']} ({kind}, family {report['family']}), "
        f"{report['num_layers']} language layers, dtype {report['dtype']}, {report['weights_format']}"
    )
    table = Table("component", "parameters", "share")
    total = report["parameters"]["total"]
    for component, count in report["parameters"].items():
        if component != "total":
            table.add_row(component, f"{count:,}", f"{100 * count / max(total, 1):.1f}%")
    table.add_row("[bold]total[/bold]", f"{total:,}", "100%")
    console.print(table)
    mapping = report["language_mapping"]
    console.print(
        f"language side: {mapping['tensors']} tensors, '{mapping['runtime_prefix']}*' -> "
        f"'{mapping['standalone_prefix']}*' (lm_head stays)"
    )
    for runtime, standalone in mapping["example"].items():
        console.print(f"  {runtime} -> {standalone}")
    console.print(
        f"vocabulary rows {report['vocab_rows']}, tied embeddings: {report['tied_embeddings']}, "
        f"special tokens: {report['special_token_ids'] or 'none'}"
    )
    if report["ignored_checkpoint_keys"]:
        console.print(f"ignored checkpoint keys: {report['ignored_checkpoint_keys']}")
    for entry in report["against"]:
        vocab = entry["vocabulary"]
        status = "[green]compatible[/green]" if entry["ok"] else "[red]incompatible[/red]"
        console.print(f"\nagainst [bold]{entry['other']}[/bold] ({entry['other_architecture']}): {status}")
        console.print(
            f"  shared language tensors: {entry['shared']}; vocabulary: {vocab['shared_rows']} shared rows, "
            f"{vocab['extra_rows']} extra here, {vocab['other_extra_rows']} extra there"
            + ("" if vocab["tokenizers_compared"] else " (tokenizers not compared)")
        )
        console.print(f"  tied: here {entry['tied']}, there {entry['other_tied']}")
        for problem in entry["problems"]:
            console.print(f"  [red]- {escape(problem)}[/red]")
        for note in entry.get("notes", []):
            console.print(f"  - {note}", markup=False)
