"""The same-size DFS variant with weighted layers (`same_size_mix: weighted`) and a configurable host.

Independent references: a mixed position's layer is checked against a model built by hand from the
sources' tensors ((1 - alpha) W_k + alpha W_{k+1}, every hop's input times its scale); the runtime's
logits against the exported checkpoint's (Llama, and LLaVA on an image prompt); `vlmmerge merge` of the
written recipe against the exported tensors, bit for bit; the recipe against mergekit.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from core_helpers import load_tensors
from test_dataflow_runtime import HOPS, _pair
from vlmmerge.cli import main as cli_main
from vlmmerge.dataflow.export import PathHop, export_path
from vlmmerge.dataflow.picture import path_text
from vlmmerge.dataflow.run import check_vlm_host, host_index
from vlmmerge.dataflow.runtime import HopSpec, load_layer_path
from vlmmerge.dataflow.spaces import DataflowSpace, path_hop
from vlmmerge.errors import RecipeError
from vlmmerge.search.space import parse_evolve
from vlmmerge.testing.tiny import smoke_inputs

MIXED = [HopSpec(0, 0, 1.3, 1, 0.3), HopSpec(1, 1, 0.8)]  # L0 = 0.7 A + 0.3 B (x1.3), L1 = B's (x0.8)


def _space(counts=(3, 3), models=("A", "B"), host=0, **flow) -> DataflowSpace:
    config = parse_evolve({"dataflow": {"variant": "same_size", "same_size_mix": "weighted", **flow},
                           "fitness": {"tasks": [{"task": "ja_math"}]}, "popsize": 4, "budget": 8})
    return DataflowSpace(list(models), list(counts[: len(models)]) + [counts[0]] * (len(models) - len(counts)),
                         config, host=host)


def test_weighted_genes_decode_to_mixes_of_neighbouring_sources():
    space = _space()
    assert space.dimension == 6
    assert space.path(space.initial_genome()) == [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0)]  # model A
    genome = space.initial_genome()
    genome[:3] = [0.3, 1.0, 0.0]
    genome[3] = 0.6  # scale bounds (0.5, 1.5): 1.1
    assert space.path(genome) == [(0, 0, 1.1, 1, 0.3), (1, 1, 1.0), (0, 2, 1.0)]
    decoded = space.decode(genome)["path"]
    assert decoded[0] == ["A", 0, 1.1, "B", 0.3]
    assert path_text(decoded).startswith("[L0 = 0.7 A + 0.3 B] x1.1 -> B[1] -> A[2]")
    assert path_hop(space.path(genome)[0], space.models) == PathHop("A", 0, 1.1, "B", 0.3)
    three = _space(counts=(2, 2, 2), models=("A", "B", "C"))
    genome = three.initial_genome()
    genome[:2] = [0.75, 0.5]  # x (n - 1) = 1.5: half B, half C; 1.0: B alone
    assert three.path(genome) == [(1, 0, 1.0, 2, 0.5), (1, 1, 1.0)]
    choice = _space(same_size_mix="choice")
    assert choice.path(np.array([0.3, 0.9, 0.1, 0.5, 0.5, 0.5])) == [(0, 0, 1.0), (1, 1, 1.0), (0, 2, 1.0)]


def test_weighted_needs_equal_layer_counts_and_host_positions():
    with pytest.raises(RecipeError, match="evolve.dataflow.same_size_mix: .* same layer count; got \\[3, 2\\]"):
        _space(counts=(3, 2))
    config = parse_evolve({"dataflow": {"variant": "same_size"}, "fitness": {"tasks": [{"task": "ja_math"}]}})
    space = DataflowSpace(["A", "B"], [2, 3], config, host=1)  # the host's 3 positions, its layers at the start
    assert space.dimension == 6 and space.path(space.initial_genome()) == [(1, 0, 1.0), (1, 1, 1.0), (1, 2, 1.0)]
    genome = space.initial_genome()
    genome[:3] = 0.1  # A's layers; A lacks layer 2: the host's stays
    assert space.path(genome) == [(0, 0, 1.0), (0, 1, 1.0), (1, 2, 1.0)]
    weighted = _space(models=("A", "B", "C"), host=2)
    assert weighted.path(weighted.initial_genome()) == [(2, p, 1.0) for p in range(3)]
    paper = DataflowSpace(["A", "B"], [2, 3], parse_evolve({"dataflow": {"variant": "hop_scales", "repeats": 1},
                                                          "fitness": {"tasks": [{"task": "ja_math"}]}}), host=1)
    assert paper.path(paper.initial_genome()) == [(1, 0, 1.0), (1, 1, 1.0), (1, 2, 1.0)]
    with pytest.raises(RecipeError, match="evolve.dataflow.same_size_mix"):
        parse_evolve({"dataflow": {"same_size_mix": "soft"}, "fitness": {"tasks": [{"task": "ja_math"}]}})


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    a, b = _pair(tmp_path_factory.mktemp("mix"), "llama")
    return a, b, load_layer_path([str(a), str(b)], dtype=torch.float32)


def _by_hand(a: Path, b: Path, hops, ids: torch.Tensor) -> torch.Tensor:
    """A copy of A whose layer p is built from the sources' tensors, each layer run on scale * h."""
    model = AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32).eval()
    sources = [model, AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32)]
    layers = []
    for hop in hops:
        layer = copy.deepcopy(sources[hop.source].model.layers[hop.layer])
        if hop.mixed:
            other = dict(sources[hop.mix_source].model.layers[hop.layer].named_parameters())
            with torch.no_grad():
                for name, param in layer.named_parameters():
                    param.copy_((1 - hop.mix) * param + hop.mix * other[name])
        layers.append(layer)
    lm = model.model
    h = lm.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rope = lm.rotary_emb(h, position_ids=positions)
    mask = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)[None, None]
    for hop, layer in zip(hops, layers):
        out = layer(h * hop.scale, attention_mask=mask, position_embeddings=rope, position_ids=positions)
        h = out[0] if isinstance(out, tuple) else out
    return model.lm_head(lm.norm(h))


def _export(hops, refs, out: Path, host: str) -> dict:
    path_hops = [PathHop(refs[h.source], h.layer, h.scale, refs[h.mix_source] if h.mixed else None, h.mix)
                 for h in hops]
    recipe = export_path(path_hops, out, host=host, dtype="float32", sources=refs)
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def test_mixed_layers_run_the_formula_export_and_merge_back(llamas, tmp_path):
    a, b, runtime = llamas
    own = {n: p.clone() for n, p in runtime.layers[0][0].named_parameters()}
    ids = torch.tensor([[1, 5, 9, 4, 7, 3, 2, 8]])
    with torch.no_grad():
        runtime.set_path([HopSpec(0, 0, 1.0, 1, 0.9), HopSpec(0, 1)])  # a first candidate at this position
        runtime.set_path(MIXED)  # the private layer is overwritten, not re-made
        got = runtime.model(input_ids=ids).logits
        torch.testing.assert_close(got, _by_hand(a, b, MIXED, ids), rtol=0, atol=1e-4)
    assert runtime.lm.layers[0].layer is not runtime.layers[0][0] and runtime.lm.layers[1].layer is runtime.layers[1][1]
    assert all(torch.equal(p, own[n]) for n, p in runtime.layers[0][0].named_parameters())  # sources untouched

    refs = [str(a), str(b)]
    recipe = _export(MIXED, refs, tmp_path / "out", host=str(a))
    assert recipe["merge_method"] == "linear" and recipe["parameters"] == {"normalize": False}
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert exported.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, got, rtol=0, atol=1e-5)
    ours, ta, tb = load_tensors(tmp_path / "out"), load_tensors(a), load_tensors(b)
    q, o = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
    torch.testing.assert_close(ours[q], 0.7 * ta[q] + 0.3 * tb[q], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[o], (0.7 * ta[o] + 0.3 * tb[o]) / 1.3, rtol=1e-6, atol=1e-7)
    down = "model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(ours[down], tb[down] / (1.3 * 0.8), rtol=1e-6, atol=1e-7)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        assert torch.equal(ours[name], (tb if "layers.1" in name else ta)[name]), name

    assert cli_main(["merge", str(tmp_path / "out.yaml"), str(tmp_path / "again"), "--quiet"]) == 0
    again = load_tensors(tmp_path / "again")
    assert sorted(again) == sorted(ours) and all(torch.equal(again[n], ours[n]) for n in ours)


def test_mixed_recipe_gives_mergekits_tensors(llamas, tmp_path):
    a, b, _ = llamas
    recipe = _export(MIXED, [str(a), str(b)], tmp_path / "out", host=str(a))
    plain = {k: v for k, v in recipe.items() if k not in ("host", "components")}  # vlmmerge-only keys
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump(plain, sort_keys=False))
    mergekit = shutil.which("mergekit-yaml") or str(Path(sys.executable).with_name("mergekit-yaml"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([mergekit, str(tmp_path / "mk.yaml"), str(tmp_path / "mk"), "--no-cuda", "--quiet"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs, ours = load_tensors(tmp_path / "mk"), load_tensors(tmp_path / "out")
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[n], ours[n]) for n in ours)  # bit for bit


def test_llava_mixed_path_on_an_image_prompt(tmp_path):
    a, b = _pair(tmp_path, "llava", vlm=True)
    refs = [str(a), str(b)]
    runtime = load_layer_path(refs, dtype=torch.float32)
    count = runtime.layer_counts[0]
    hops = [HopSpec(0, p, 1.0 + 0.1 * p, 1, 0.25 + 0.5 * (p % 2)) for p in range(count)]
    runtime.set_path(hops)
    inputs = smoke_inputs("llava", runtime.processor)
    _export(hops, refs, tmp_path / "out", host=str(a))
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, runtime.model(**inputs).logits, rtol=0, atol=1e-5)
    ours, host = load_tensors(tmp_path / "out"), load_tensors(a)
    vision = [n for n in host if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and all(torch.equal(ours[n], host[n]) for n in vision)
    assert cli_main(["merge", str(tmp_path / "out.yaml"), str(tmp_path / "again"), "--quiet"]) == 0
    again = load_tensors(tmp_path / "again")
    assert all(torch.equal(again[n], ours[n]) for n in ours)


def test_host_is_configurable(llamas, tmp_path):
    a, b, _ = llamas
    refs = [str(a), str(b)]
    runtime = load_layer_path(refs, dtype=torch.float32, host=1)
    runtime.set_path([HopSpec(*h) for h in HOPS])
    assert runtime.lm.layers[0].layer is runtime.layers[0][0]  # A's layers lent to B's model
    export_path([PathHop(refs[s], l, c) for s, l, c in HOPS], tmp_path / "out", host=refs[1], dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, runtime.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    ours, tb = load_tensors(tmp_path / "out"), load_tensors(b)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(ours[name], tb[name]), name
    assert torch.equal(runtime.lm.embed_tokens.weight, tb["model.embed_tokens.weight"])
    assert not torch.equal(ours["lm_head.weight"], load_tensors(a)["lm_head.weight"])


def test_host_setting_names_a_model_and_a_vlm_needs_a_vlm_host(tmp_path):
    aliases = [["zoo:vlm", "/x/vlm", "vlm"], ["zoo:ja_lm", "/x/ja_lm", "ja_lm"]]
    assert host_index(None, aliases) == 0 and host_index("ja_lm", aliases) == 1 and host_index("zoo:ja_lm", aliases) == 1
    with pytest.raises(RecipeError, match="evolve.dataflow.host: 'math' is not one of the recipe's models"):
        host_index("math", aliases)
    a, b = _pair(tmp_path, "llava", vlm=True)
    check_vlm_host([str(a), str(b)], 0, None)
    with pytest.raises(RecipeError, match="evolve.dataflow.host: 'b' is a text-only model, but a is a VLM"):
        check_vlm_host([str(a), str(b)], 1, "b")


@pytest.mark.slow
def test_evolve_weighted_same_size_with_the_second_model_as_host(tmp_path):
    from vlmmerge.evaluation import load_model_for_eval
    from vlmmerge.search import run_evolution
    from vlmmerge.search.fitness import make_evaluator, weighted_fitness

    torch.set_num_threads(1)
    recipe = {
        "name": "weighted", "merge_method": "passthrough", "dtype": "float32", "tokenizer_source": "zoo:ja_lm",
        "models": [{"model": "zoo:ja_lm"}, {"model": "zoo:math_lm"}],
        "evolve": {"dataflow": {"variant": "same_size", "same_size_mix": "weighted", "host": "zoo:math_lm"},
                   "sigma0": 0.3, "popsize": 4, "budget": 8,
                   "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}], "limit": 12,
                               "batch_size": 12}},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    summary = run_evolution(tmp_path / "r.yaml", tmp_path / "run", progress=False)
    assert summary["space"]["same_size_mix"] == "weighted" and summary["space"]["host"].endswith("math_lm")
    assert any(len(hop) == 5 for hop in summary["path"]) and " + " in summary["path_text"]
    assert (tmp_path / "run" / "path.png").stat().st_size > 1000  # mixed hops drawn
    written = yaml.safe_load((tmp_path / "run" / "best-recipe.yaml").read_text())
    assert written["merge_method"] == "linear" and written["host"] == summary["space"]["host"]
    model, tokenizer = load_model_for_eval(tmp_path / "run" / "best-model")
    config = parse_evolve(recipe["evolve"])
    evaluator = make_evaluator(config.fitness, config.seed)
    fitness, _ = weighted_fitness(evaluator.evaluate(model, tokenizer), config.fitness, evaluator.tasks)
    journal = [json.loads(line) for line in (tmp_path / "run" / "journal.jsonl").read_text().splitlines()]
    assert any(len(hop) == 5 for e in journal for hop in e["params"]["path"])
    assert fitness == summary["best"]["fitness"] == summary["exported_fitness"]
    host = load_tensors(summary["space"]["host"])
    ours = load_tensors(tmp_path / "run" / "best-model")
    assert torch.equal(ours["model.embed_tokens.weight"], host["model.embed_tokens.weight"])
    assert cli_main(["merge", str(tmp_path / "run" / "best-recipe.yaml"), str(tmp_path / "again"), "--quiet"]) == 0
    again = load_tensors(tmp_path / "again")
    assert all(torch.equal(again[n], ours[n]) for n in ours)


def test_mixed_hops_off_the_same_size_shape_are_refused_for_export(llamas, tmp_path):
    a, b, _ = llamas
    hops = [PathHop(str(a), 1, 1.0, str(b), 0.5), PathHop(str(a), 0)]  # layer 1 at position 0
    with pytest.raises(RecipeError, match="must be same-size .* got layers \\[1, 0\\]"):
        export_path(hops, tmp_path / "x", host=str(a))
    assert not (tmp_path / "x").exists()
