"""The shipped miniature world: verified by checksum, selectable by `--world`, and the README's numbers
are the ones it produces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlmmerge.errors import RecipeError
from vlmmerge.zoo import ZooError, ZooPaths
from vlmmerge.zoo.refs import SHIPPED_SPEC, WORLD_ENV, WorldSpec, parse_world, resolve_zoo_ref, zoo_ref_num_layers
from vlmmerge.zoo.shipped import (
    SHIPPED_ROOT, compare_with_shipped, folder_checksums, shipped_world, verify_checksums,
)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_world_is_complete_verified_and_loads():
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    paths = shipped_world()
    assert paths.root == SHIPPED_ROOT and paths.is_complete()
    listed = json.loads((SHIPPED_ROOT / "checksums.json").read_text(encoding="utf-8"))
    assert listed == folder_checksums(SHIPPED_ROOT)
    assert sum(p.stat().st_size for p in SHIPPED_ROOT.rglob("*.safetensors")) < 20 * 2**20
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    assert (manifest["size"], manifest["seed"], manifest["threads"]) == ("demo", 0, 1)
    assert AutoModelForImageTextToText.from_pretrained(paths.vlm).config.text_config.num_hidden_layers == 4
    assert AutoModelForCausalLM.from_pretrained(paths.ja_lm).config.num_hidden_layers == 4


def test_a_modified_shipped_file_is_named(tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(SHIPPED_ROOT, copy)
    verify_checksums(copy)
    assert all(compare_with_shipped(copy).values())
    weights = copy / "ja_lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ZooError, match=r"ja_lm/model\.safetensors: sha256 differs"):
        verify_checksums(copy)
    same = compare_with_shipped(copy)
    assert same["ja_lm/model.safetensors"] is False and same["vlm/model.safetensors"] is True
    shutil.copyfile(SHIPPED_ROOT / "ja_lm" / "model.safetensors", weights)
    (copy / "vlm" / "config.json").unlink()
    with pytest.raises(ZooError, match=r"vlm/config\.json: listed in checksums\.json but missing"):
        verify_checksums(copy)


def test_world_specs_parse_and_name_what_is_wrong(tmp_path):
    assert parse_world("shipped") == SHIPPED_SPEC and SHIPPED_SPEC.shipped
    assert parse_world("demo-s2-t1") == WorldSpec("demo", 2, 1)
    assert parse_world(str(tmp_path)).folder == tmp_path
    with pytest.raises(RecipeError, match=r"'demo-2' is not a world"):
        parse_world("demo-2")
    with pytest.raises(RecipeError, match=r"no model 'vision'"):
        resolve_zoo_ref("zoo:vision")
    with pytest.raises(RecipeError, match=r"unknown world size 'huge'"):
        resolve_zoo_ref("zoo:huge/vlm")


def test_zoo_refs_follow_the_active_world(monkeypatch, tmp_path, micro: ZooPaths):
    monkeypatch.delenv(WORLD_ENV, raising=False)
    assert resolve_zoo_ref("zoo:vlm") == str(SHIPPED_ROOT / "vlm")
    assert resolve_zoo_ref("/some/model") == "/some/model"
    monkeypatch.setenv(WORLD_ENV, str(micro.root))
    assert resolve_zoo_ref("zoo:math_lm") == str(micro.math_lm)
    built = []
    monkeypatch.setattr("vlmmerge.zoo.build.ensure_zoo",
                        lambda size, seed, progress=True, threads=1: built.append((size, seed, threads)) or micro)
    monkeypatch.setenv(WORLD_ENV, "demo-s1-t2")
    resolve_zoo_ref("zoo:base")
    assert built == [("demo", 1, 2)]
    assert zoo_ref_num_layers("zoo:vlm") == 4 and zoo_ref_num_layers("zoo:micro/vlm") == 2
    monkeypatch.setenv(WORLD_ENV, str(tmp_path))
    with pytest.raises(ZooError, match="not a built miniature world"):
        resolve_zoo_ref("zoo:vlm")


def test_readme_and_docs_say_what_the_recorded_results_say():
    """README's demo and world tables are generated from docs/results/demo-shipped.json (`vlmmerge demo
    --write-readme README.md`), the study table from docs/results/study.json."""
    from vlmmerge.docblocks import markers
    from vlmmerge.zoo.study_report import claim_counts, readme_demo_block, readme_world_block, study_block

    recorded = json.loads((REPO / "docs" / "results" / "demo-shipped.json").read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    def block(text: str, name: str) -> str:
        start, end = markers(name)
        return text.split(start, 1)[1].split(end, 1)[0].strip("\n")

    assert block(readme, "demo-results") == readme_demo_block(recorded)
    assert block(readme, "world-table") == readme_world_block(recorded)
    study = json.loads((REPO / "docs" / "results" / "study.json").read_text(encoding="utf-8"))
    doc = (REPO / "docs" / "miniature-world.md").read_text(encoding="utf-8")
    assert block(doc, "zoo-study") == study_block(study)
    assert block(readme, "study-summary") == claim_counts(study)
    shipped_in_study = [w for w in study if w["world"] == "demo-s0-t1"]
    assert shipped_in_study, "the study includes the shipped world's recipe (seed 0, 1 thread)"
    for case, result in recorded["cases"].items():
        assert result["scores"] == shipped_in_study[0]["cases"][case]["scores"], case


def test_demo_command_runs_on_another_world_and_records_only_the_shipped_one(micro: ZooPaths, tmp_path, capsys):
    """`vlmmerge demo --world PATH --quick` runs both cases and the world table on that world; recording
    the README from anything but a full run on the shipped world is refused before any work."""
    from vlmmerge.cli import main

    assert main(["demo", "--world", str(micro.root), "--quick", "--write-readme", str(tmp_path / "R.md")]) != 0
    assert "--write-readme" in capsys.readouterr().err and not (tmp_path / "R.md").exists()
    assert main(["demo", "--world", str(micro.root), "--quick", "--out", str(tmp_path / "runs")]) == 0
    result = json.loads((tmp_path / "runs" / micro.root.name / "quick" / "study.json").read_text(encoding="utf-8"))
    assert set(result["cases"]) == {"vlm", "llm"}
    for case in result["cases"].values():
        assert case["budget"] == 24 and len(case["cma_curve"]) == 24 and len(case["random_curve"]) == 24
        assert set(case["claims"]) == {"evolved_beats_all", "cma_half_budget", "plateau"}
    assert len(result["world_table"]) == 12
    out = capsys.readouterr().out
    assert "VLM case: Japanese captions" in out and "three sources: TIES" in out
    # the two-objective row: its front table, and the pictures the table and the report link to
    pareto = tmp_path / "runs" / micro.root.name / "quick" / "vlm-pareto"
    assert "Dominated by a front member" in out and str(pareto / "front.png") in out
    assert (pareto / "front.png").is_file() and (pareto / "front.json").is_file()
    assert "../front.png" in (pareto / "test" / "comparison.html").read_text(encoding="utf-8")
