"""The committed eval sets of the miniature world: regenerated identically, splits disjoint, loadable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmmerge.evaluation import load_task
from vlmmerge.zoo.eval_sets import generate

REPO = Path(__file__).resolve().parents[1]
EVAL_SETS = REPO / "eval_sets"
NAMES = ("ja_caption", "ja_vqa", "ja_math", "en_caption", "en_math")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_eval_sets_equal_the_generator_output(tmp_path):
    generate(tmp_path / "sets")
    fresh = _files(tmp_path / "sets")
    committed = {k: v for k, v in _files(EVAL_SETS).items() if k != "README.md"}
    assert sorted(fresh) == sorted(committed), "file lists differ; rerun python -m vlmmerge.zoo.eval_sets"
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"regenerated files differ from the committed ones: {changed[:5]}"


def _rows(name: str, split: str) -> list[dict]:
    lines = (EVAL_SETS / name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("name", NAMES)
def test_splits_share_no_item_image_or_question(name):
    fitness, test = _rows(name, "fitness"), _rows(name, "test")
    assert len(fitness) == 100 and len(test) == 200
    assert not {r["id"] for r in fitness} & {r["id"] for r in test}
    if "image" in fitness[0]:
        fit_images = {(EVAL_SETS / name / r["image"]).read_bytes() for r in fitness}
        test_images = {(EVAL_SETS / name / r["image"]).read_bytes() for r in test}
        assert not fit_images & test_images, "an image appears in both splits"
    else:
        assert not {r["question"] for r in fitness} & {r["question"] for r in test}
    task = load_task(str(EVAL_SETS / name))  # the loader's own cross-split checks pass too
    assert task.name == name


def test_culture_slice_is_present_in_caption_and_vqa_sets():
    for name in ("ja_caption", "en_caption"):
        slices = [r["meta"]["slice"] for r in _rows(name, "test")]
        share = slices.count("culture") / len(slices)
        assert 0.2 <= share <= 0.4, f"{name}: culture share {share:.2f}"
    culture_refs = [r["reference"] for r in _rows("ja_caption", "test") if r["meta"]["slice"] == "culture"]
    assert any(word in ref for ref in culture_refs for word in ("鳥居", "富士山", "おにぎり", "提灯"))
