"""The learned-merge tables in README.md and docs/miniature-world.md are the ones
`benchmarks/tune_acceptance.py` renders from the recorded results (docs/results/tune.json)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from vlmmerge.docblocks import markers

ROOT = Path(__file__).resolve().parents[1]


def _acceptance():
    spec = importlib.util.spec_from_file_location("tune_acceptance", ROOT / "benchmarks" / "tune_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_show_the_recorded_tune_results():
    acceptance = _acceptance()
    results = json.loads((ROOT / "docs" / "results" / "tune.json").read_text(encoding="utf-8"))
    results["cases"] = {k: results["cases"][k] for k in acceptance.CASES if k in results["cases"]}
    body = acceptance.render(results)
    start, end = markers(acceptance.BLOCK)
    for doc in (ROOT / "README.md", ROOT / "docs" / "miniature-world.md"):
        text = doc.read_text(encoding="utf-8")
        block = text[text.index(start) + len(start):text.index(end)]
        assert block.strip() == body.strip(), f"{doc.name}: the {acceptance.BLOCK} block differs from docs/results/tune.json"
