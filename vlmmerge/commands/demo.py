"""`vlmmerge demo [--quick] [--world W]`: evolve a VLM merge and an LLM merge on the miniature world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECORDED = Path(__file__).resolve().parents[2] / "docs" / "results" / "demo-shipped.json"
RECORDED_DATAFLOW = RECORDED.with_name("dataflow.json")  # the DFS and PS+DFS rows (vlmmerge.dataflow)
WORLD_DOC = RECORDED.parents[1] / "miniature-world.md"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="the main job on the built-in miniature world: evolve a VLM + Japanese LM and a Japanese + math LM merge",
        description="Runs configs/demo-vlm.yaml and configs/demo-llm.yaml through `vlmmerge evolve` on the "
        "miniature world shipped with vlmmerge (no build needed), scores the world's sources and untuned merges, "
        "and prints the test-split tables. Evaluation uses one torch thread, so the numbers are the same on "
        "every machine.",
    )
    parser.add_argument("--quick", action="store_true", help="about a minute: smaller search budget")
    parser.add_argument("--world", default="shipped", metavar="WORLD",
                        help="'shipped' (default), a rebuilt or reseeded world SIZE-sSEED-tTHREADS such as demo-s1-t2 "
                        "(built and cached on first use, ~9 min), or a built world folder")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--configs", type=Path, default=REPO_CONFIGS, help="folder with demo-vlm.yaml and demo-llm.yaml")
    parser.add_argument("--write-readme", type=Path, default=None, metavar="README",
                        help="after a full run on the shipped world: record the results in docs/results/"
                        "demo-shipped.json and regenerate README's demo and world tables from them")
    parser.add_argument("--no-dataflow", action="store_true",
                        help="skip the data-flow rows (DFS alone and PS+DFS, configs/demo-*-dfs.yaml / -psdfs.yaml)")
    parser.add_argument("--no-pareto", action="store_true",
                        help="skip the multi-objective row (Japanese and English captions, configs/demo-vlm-pareto.yaml)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The demo; the world it activates (`VLMMERGE_WORLD`) is the caller's again afterwards."""
    import os

    from vlmmerge.zoo.refs import WORLD_ENV

    before = os.environ.get(WORLD_ENV)
    try:
        return _run(args)
    finally:
        if before is None:
            os.environ.pop(WORLD_ENV, None)
        else:
            os.environ[WORLD_ENV] = before


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vlmmerge.errors import VlmMergeError
    from vlmmerge.zoo.refs import parse_world
    from vlmmerge.zoo.study import QUICK, study_dataflow, study_world, world_arg
    from vlmmerge.zoo.study_report import dataflow_block, readme_demo_block, readme_world_block

    spec = parse_world(args.world)
    if args.write_readme is not None and (args.quick or not spec.shipped):
        raise VlmMergeError("--write-readme: only a full run (no --quick) on the shipped world is recorded")
    console = Console()
    console.print(f"world: {spec.label}")
    mode = "quick" if args.quick else "full"
    out = args.out / mode if spec.shipped else args.out / Path(world_arg(spec)).name / mode
    result = study_world(spec, out, args.configs, overrides=QUICK if args.quick else None)
    print(readme_demo_block(result))
    print()
    print(readme_world_block(result))
    dataflow = None
    if not args.no_dataflow:
        dataflow = study_dataflow(spec, out, args.configs, overrides=QUICK if args.quick else None)
        print()
        print(dataflow_block(dataflow))
    pareto_folder = None
    if not args.no_pareto:
        from vlmmerge.zoo.study_pareto import pareto_block, study_pareto

        pareto_summary, pareto_folder = study_pareto(spec, out, args.configs, quick=args.quick)
        print()
        print(pareto_block(pareto_summary, pareto_folder))
    for case in result["cases"]:
        console.print(f"report: {out / case / 'test' / 'comparison.html'}   fitness curve: {out / case / 'fitness.png'}")
    if pareto_folder is not None:
        console.print(f"multi-objective report: {pareto_folder / 'test' / 'comparison.html'}   "
                      f"front: {pareto_folder / 'front.png'}")
    console.print(f"results: {out / 'study.json'}")
    if args.write_readme is not None:
        record(result, args.write_readme, out)
        if dataflow is not None:
            record_dataflow(dataflow, out)
            regenerate_readme(args.write_readme)
        console.print(f"recorded {RECORDED} and regenerated {args.write_readme}")
    return 0


def record(result: dict, readme: Path, run_dir: Path, recorded: Path = RECORDED) -> None:
    """Keep the run's results and journals (so a test can replay the searches) and regenerate README."""
    import shutil

    portable = {k: v for k, v in result.items() if k != "root"}
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(portable, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for case in result["cases"]:
        shutil.copyfile(run_dir / case / "journal.jsonl", recorded.with_name(f"demo-shipped-{case}-journal.jsonl"))
    regenerate_readme(readme, recorded)


def record_dataflow(result: dict, run_dir: Path, recorded: Path = RECORDED_DATAFLOW) -> None:
    """Keep the DFS / PS+DFS results and journals (demo-shipped-CASE-KIND-journal.jsonl) for replay."""
    import shutil

    recorded.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for case, kinds in result["cases"].items():
        for kind in kinds:
            shutil.copyfile(run_dir / f"{case}-{kind}" / "journal.jsonl",
                            recorded.with_name(f"demo-shipped-{case}-{kind}-journal.jsonl"))


def regenerate_readme(readme: Path, recorded: Path = RECORDED) -> None:
    """README's demo and world tables from the recorded results (no run)."""
    from vlmmerge.docblocks import replace_marked_block
    from vlmmerge.zoo.study_report import readme_demo_block, readme_world_block

    result = json.loads(recorded.read_text(encoding="utf-8"))
    replace_marked_block(readme, "demo-results", readme_demo_block(result))
    replace_marked_block(readme, "world-table", readme_world_block(result))
    dataflow = recorded.with_name(RECORDED_DATAFLOW.name)
    if dataflow.is_file():
        from vlmmerge.zoo.study_report import dataflow_block

        block = dataflow_block(json.loads(dataflow.read_text(encoding="utf-8")))
        for doc in (readme, WORLD_DOC):
            if doc.is_file() and "dataflow-results" in doc.read_text(encoding="utf-8"):
                replace_marked_block(doc, "dataflow-results", block)
    study = recorded.with_name("study.json")
    if study.is_file():
        from vlmmerge.zoo.study_report import claim_counts

        replace_marked_block(readme, "study-summary", claim_counts(json.loads(study.read_text(encoding="utf-8"))))
