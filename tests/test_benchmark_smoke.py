"""Smoke test of benchmarks/merge_speed.py at `--size tiny` (the real benchmark is not part of the suite)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("merge_speed", REPO / "benchmarks" / "merge_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["merge_speed"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_checkpoints_are_built_once_and_load_in_transformers(bench, tmp_path):
    from safetensors import safe_open
    from transformers import MistralForCausalLM

    paths = bench.build_checkpoints("tiny", tmp_path, log=lambda *_: None)
    assert list(paths) == ["base", "ft1", "ft2"]
    stamp = {name: (p / "model.safetensors.index.json").stat().st_mtime_ns for name, p in paths.items()}
    assert bench.build_checkpoints("tiny", tmp_path, log=lambda *_: None) == paths  # cached
    assert {name: (p / "model.safetensors.index.json").stat().st_mtime_ns for name, p in paths.items()} == stamp

    index = json.loads((paths["base"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded like a hub checkpoint
    with safe_open(paths["base"] / next(iter(index["weight_map"].values())), framework="pt") as handle:
        assert all(handle.get_tensor(k).dtype == torch.bfloat16 for k in handle.keys())

    base = MistralForCausalLM.from_pretrained(paths["base"], dtype=torch.float32).state_dict()
    tuned = MistralForCausalLM.from_pretrained(paths["ft1"], dtype=torch.float32).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    delta = tuned[name] - base[name]
    # fine-tune = base + N(0, FINETUNE_STD) noise, the base ~ N(0, INIT_STD)
    assert 0.5 * bench.FINETUNE_STD < float(delta.std()) < 2 * bench.FINETUNE_STD
    assert 0.8 * bench.INIT_STD < float(base[name].std()) < 1.2 * bench.INIT_STD
    assert torch.equal(base["model.norm.weight"], torch.ones_like(base["model.norm.weight"]))


def test_recipes_are_valid_for_both_tools(bench, tmp_path):
    from vlmmerge.recipe import load_recipe

    paths = {name: tmp_path / name for name in bench.MODEL_NAMES}
    for method in bench.METHODS:
        recipe = load_recipe(bench.recipe_for(method, paths))
        assert recipe.merge_method == bench.COUNTER_VARIANTS.get(method, method)
        assert recipe.dtype == "bfloat16"
        assert recipe.mask_generator == ("counter" if method in bench.COUNTER_VARIANTS else "torch")
        text = yaml.safe_dump(bench.recipe_for(method, paths, "mergekit"))
        assert "options" not in text and "seed" not in text and "mask_generator" not in text  # plain mergekit keys only
    with pytest.raises(ValueError, match="unknown benchmark method"):
        bench.recipe_for("slerp", paths)


def test_tiny_run_measures_processes_and_writes_the_doc(bench, tmp_path):
    result = bench.run_benchmark("tiny", 1, ["ties"], tmp_path, tools=("vlmmerge",), log=lambda *_: None)
    tools = [(r.tool, r.method) for r in result.runs]
    assert tools == [("vlmmerge", "ties"), ("floor", "io")]
    for run in result.runs:
        assert run.returncode == 0 and run.wall_s > 0 and run.peak_rss_mb > 50
    assert result.runs[-1].inner_s is not None and result.runs[-1].inner_s >= 0
    assert not list((tmp_path / "work-tiny").glob("out-*"))  # outputs removed after each run

    rows = bench.summarise(result)
    assert rows[0]["method"] == "ties" and rows[0]["wall_vs_floor"] > 0 and rows[0]["mergekit_wall"] is None
    text = bench.markdown(result)
    assert "| ties |" in text and "I/O floor process" in text and result.command in text

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n## Other\nkeep me\n\n{bench.RESULTS_START}\nold\n{bench.RESULTS_END}\n\n## After\nme too\n")
    bench.write_doc(text, doc)
    written = doc.read_text()
    assert "keep me" in written and "me too" in written and "old" not in written and "| ties |" in written


def test_io_floor_copies_the_first_input(bench, tmp_path):
    from safetensors.torch import load_file

    paths = bench.build_checkpoints("tiny", tmp_path, log=lambda *_: None)
    seconds = bench.io_floor(tmp_path / "floor", [paths[n] for n in bench.MODEL_NAMES])
    assert seconds >= 0
    for file in paths["base"].glob("*.safetensors"):
        ours, theirs = load_file(tmp_path / "floor" / file.name), load_file(file)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_candidate_speed_runs_tiny_and_writes_its_block_and_json(tmp_path, monkeypatch):
    speed = _script("candidate_speed")
    doc, out = tmp_path / "benchmarks.md", tmp_path / "candidate_speed.json"
    doc.write_text("# B\n\n<!-- candidate-speed:start -->\nSTALE BLOCK TEXT\n<!-- candidate-speed:end -->\n\n## After\nkeep me\n")
    monkeypatch.setattr(sys, "argv", ["candidate_speed.py", "--hidden", "64", "--layers", "1", "--repeats", "1",
                                      "--methods", "dare_ties,linear", "--mask-methods", "dare_ties",
                                      "--doc", str(doc), "--json", str(out)])
    speed.main()
    result = json.loads(out.read_text())
    assert [r["label"] for r in result["rows"]] == [
        "dare_ties", "linear", "dare_ties, counter masks", "dare_ties, torch masks, no mask cache",
        "dare_ties, counter masks, no mask cache"]
    assert all(r["live_s"] > 0 and r["disk_s"] > 0 for r in result["rows"])
    kept = [r["kept_mask_mib"] > 0 for r in result["rows"]]
    assert kept == [True, False, True, False, False]  # no mask cache: nothing kept
    assert result["mask_draw_ns"]["torch"] > 0 and result["mask_draw_ns"]["counter"] > 0
    text = doc.read_text()
    assert "| dare_ties |" in text and "| dare_ties, counter masks, no mask cache |" in text
    assert "keep me" in text and "STALE BLOCK TEXT" not in text


def test_search_throughput_estimate_and_table_from_measured_rows(tmp_path):
    throughput = _script("search_throughput")
    measured = tmp_path / "candidate_speed.json"
    measured.write_text(json.dumps({"rows": [{"method": "ties", "live_over_floor": 10.0, "kept_mask_mib": 0},
                                             {"method": "dare_ties", "live_over_floor": 10.0, "kept_mask_mib": 5},
                                             {"method": "dare_ties", "label": "dare_ties, counter masks",
                                              "live_over_floor": 99.0, "kept_mask_mib": 5}]}))
    estimate = throughput.estimate_7b(measured, ns_per_draw=10.0)
    floor = 7e9 * 2 * 3 / (throughput.GPU_BANDWIDTH_GBS * 1e9)
    assert estimate["floor_s"] == pytest.approx(floor)
    ties, dare = estimate["rows"]
    assert ties["materialise_s"] == pytest.approx(10 * floor)
    need, kept = 7e9 * 4 * 2, 4 * 1024**3
    masks = need / (throughput.PCIE_GBS * 1e9) + (need - kept) / 4 * 10e-9
    assert dare["masks_s"] == pytest.approx(masks) and dare["materialise_s"] == pytest.approx(10 * floor + masks)
    counter = need / 4 * throughput.COUNTER_OPS_PER_UNIFORM / (throughput.GPU_INT32_TOPS * 1e12) \
        + need * 2 / (throughput.GPU_BANDWIDTH_GBS * 1e9)
    assert dare["counter_materialise_s"] == pytest.approx(10 * floor + counter) and ties["counter_masks_s"] == 0
    modes = [{"mode": "local", "startup_s": 0.1, "search_s": 6.0, "evals_per_min": 240.0, "median_candidate_s": 0.2},
             {"mode": "ray, 2 actor(s)", "startup_s": 6.0, "search_s": 3.0, "evals_per_min": 480.0,
              "median_candidate_s": 0.2}]
    result = {"date": "d", "machine": "m", "torch": "t", "threads": 1, "budget": 24, "limit": 40,
              "same_journal": True, "modes": modes, "estimate_7b": estimate}
    args = type("Args", (), {"budget": 24, "limit": 40, "actors": "2", "threads": 1})()
    text = throughput.render(result, args)
    assert "| ray, 2 actor(s) | 6.0 | 3.0 | 480 | 2.00x | 0.20 |" in text and "Estimate, not measured" in text
    assert throughput.draw_ns() > 0
