"""The recorded DFS and PS+DFS demo rows are what the shipped world produces today.

The recorded runs keep their journals (docs/results/demo-shipped-CASE-KIND-journal.jsonl). Replaying
them through configs/demo-CASE-{dfs,psdfs}.yaml makes CMA-ES and random search ask every recorded
genome again (a different genome is an error); the export of the best path, its re-evaluated fitness
and the test report of every source, PS and the exported checkpoint are computed afresh and must
equal docs/results/dataflow.json, and README / docs/miniature-world.md must show its table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from vlmmerge.zoo.refs import SHIPPED_SPEC, WORLD_ENV
    from vlmmerge.zoo.study import study_dataflow

    recorded = json.loads((RESULTS / "dataflow.json").read_text(encoding="utf-8"))
    out = tmp_path_factory.mktemp("dataflow")
    for case, kinds in recorded["cases"].items():
        for kind in kinds:
            (out / f"{case}-{kind}").mkdir()
            shutil.copyfile(RESULTS / f"demo-shipped-{case}-{kind}-journal.jsonl", out / f"{case}-{kind}" / "journal.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WORLD_ENV, "shipped")
        result = study_dataflow(SHIPPED_SPEC, out, REPO / "configs", progress=False)
    return out, recorded, result


def test_replayed_dataflow_runs_equal_the_recorded_results(replayed):
    out, recorded, result = replayed
    for case, kinds in recorded["cases"].items():
        for kind, expected in kinds.items():
            got = result["cases"][case][kind]
            lines = (out / f"{case}-{kind}" / "journal.jsonl").read_text().splitlines()
            assert len(lines) == expected["budget"] * 2, f"{case}-{kind}: the replay evaluated new candidates"
            for key in ("scores", "evolved_vs", "best_fitness", "random_best_fitness", "cma_curve", "path", "claims",
                        "exported_fitness"):
                assert got[key] == expected[key], f"{case}-{kind}: {key}"
            assert got["exported_fitness"] == got["best_fitness"], f"{case}-{kind}: exported model scores differently"


def test_documents_show_the_recorded_table(replayed):
    from vlmmerge.docblocks import markers
    from vlmmerge.zoo.study_report import dataflow_block

    _, recorded, _ = replayed
    block = dataflow_block(recorded)
    for doc in (REPO / "README.md", REPO / "docs" / "miniature-world.md"):
        start, end = markers("dataflow-results")
        text = doc.read_text(encoding="utf-8")
        assert text.split(start, 1)[1].split(end, 1)[0].strip() == block.strip(), doc.name
