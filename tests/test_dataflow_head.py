"""`evolve.dataflow.head_from`: another source's embeddings, final norm and head on the host's path.

Independent references: the runtime's logits against the exported checkpoint's (Llama and LLaVA on an
image prompt, slices and weighted `linear` exports); the exported tensors against the sources' own
(vision tower + projector bit for bit the host's, embeddings / norm / head bit for bit head_from's);
`vlmmerge merge` of the written recipe against the export, bit for bit; tied embeddings both ways.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from core_helpers import load_tensors, perturb
from test_dataflow_runtime import HOPS, _pair
from vlmmerge.cli import main as cli_main
from vlmmerge.dataflow.export import PathHop, export_path
from vlmmerge.dataflow.run import host_index
from vlmmerge.dataflow.runtime import HopSpec, lend_head, load_layer_path
from vlmmerge.dataflow.spaces import DataflowSpace
from vlmmerge.errors import RecipeError
from vlmmerge.search.space import parse_evolve
from vlmmerge.testing.tiny import build_tiny_lm_for, build_tiny_model, save_model, smoke_inputs, tiny_processor

LM_HEAD = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
VLM_HEAD = ("model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight")


def _export(hops, refs, out: Path, host: str, head_from: str) -> dict:
    path_hops = [PathHop(refs[h.source], h.layer, h.scale, refs[h.mix_source] if h.mixed else None, h.mix)
                 for h in hops]
    recipe = export_path(path_hops, out, host=host, dtype="float32", sources=refs, head_from=head_from)
    (out.parent / f"{out.name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def _merged_again(tmp_path: Path, name: str) -> dict:
    assert cli_main(["merge", str(tmp_path / f"{name}.yaml"), str(tmp_path / f"{name}-again"), "--quiet"]) == 0
    return load_tensors(tmp_path / f"{name}-again")


def _tied_pair(root: Path, tie_a: bool, tie_b: bool):
    models = [perturb(build_tiny_model("llama", seed=3, num_hidden_layers=2, tie_word_embeddings=tie), seed=s)
              for s, tie in ((1, tie_a), (2, tie_b))]
    for model in models:
        if model.config.tie_word_embeddings:
            model.tie_weights()
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(10)
    return save_model(models[0], root / "a"), save_model(models[1], root / "b")


@pytest.mark.parametrize("weighted", [False, True])
def test_llama_head_from_the_second_model(tmp_path, weighted):
    a, b = _pair(tmp_path, "llama")
    refs = [str(a), str(b)]
    runtime = load_layer_path(refs, dtype=torch.float32, head=1)
    hops = [HopSpec(0, 0, 1.3, 1, 0.3), HopSpec(0, 1, 0.8)] if weighted else [HopSpec(*h) for h in HOPS]
    runtime.set_path(hops)
    source_b = runtime._keep[0]
    assert runtime.lm.embed_tokens is source_b.model.embed_tokens and runtime.model.lm_head is source_b.lm_head
    recipe = _export(hops, refs, tmp_path / "out", host=refs[0], head_from=refs[1])
    assert recipe["merge_method"] == ("linear" if weighted else "passthrough")
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, runtime.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    ours, ta, tb = load_tensors(tmp_path / "out"), load_tensors(a), load_tensors(b)
    for name in LM_HEAD:
        assert torch.equal(ours[name], tb[name]) and not torch.equal(ours[name], ta[name]), name
    again = _merged_again(tmp_path, "out")
    assert sorted(again) == sorted(ours) and all(torch.equal(again[n], ours[n]) for n in ours)


@pytest.mark.parametrize("weighted", [False, True])
def test_llava_keeps_its_vision_side_and_takes_the_lms_head(tmp_path, weighted):
    a, b = _pair(tmp_path, "llava", vlm=True)
    refs = [str(a), str(b)]
    runtime = load_layer_path(refs, dtype=torch.float32, head=1)
    count = runtime.layer_counts[0]
    if weighted:
        hops = [HopSpec(0, p, 1.0 + 0.1 * p, 1, 0.25 + 0.5 * (p % 2)) for p in range(count)]
    else:
        hops = [HopSpec(1, 0, 1.2), HopSpec(0, 0, 0.9), HopSpec(1, count - 1, 1.1), HopSpec(0, 1)]
    runtime.set_path(hops)
    inputs = smoke_inputs("llava", runtime.processor)
    _export(hops, refs, tmp_path / "out", host=refs[0], head_from=refs[1])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, runtime.model(**inputs).logits, rtol=0, atol=1e-5)
    ours, host, lm = load_tensors(tmp_path / "out"), load_tensors(a), load_tensors(b)
    vision = [n for n in host if "vision_tower" in n or "multi_modal_projector" in n]
    assert vision and all(torch.equal(ours[n], host[n]) for n in vision)
    image = model.config.image_token_id  # the engine keeps the host's special-token rows (as in PS merges)
    for name, lm_name in zip(VLM_HEAD, LM_HEAD):
        assert not torch.equal(ours[name], host[name]), name
        if "norm" in name:
            assert torch.equal(ours[name], lm[lm_name]), name
            continue
        others = [r for r in range(ours[name].shape[0]) if r != image]
        assert torch.equal(ours[name][others], lm[lm_name][others]), name
        assert torch.equal(ours[name][image], host[name][image]), name
    assert runtime.lm.norm is runtime._keep[0].model.norm  # shared; embeddings / head: private (one host row)
    assert torch.equal(runtime.model.lm_head.weight, ours["lm_head.weight"])
    again = _merged_again(tmp_path, "out")
    assert sorted(again) == sorted(ours) and all(torch.equal(again[n], ours[n]) for n in ours)


@pytest.mark.parametrize("tie_a,tie_b", [(True, False), (False, True), (True, True)])
def test_tied_embeddings_on_either_side(tmp_path, tie_a, tie_b):
    a, b = _tied_pair(tmp_path, tie_a, tie_b)
    refs = [str(a), str(b)]
    runtime = load_layer_path(refs, dtype=torch.float32, head=1)
    hops = [HopSpec(*h) for h in HOPS]
    runtime.set_path(hops)
    _export(hops, refs, tmp_path / "out", host=refs[0], head_from=refs[1])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, runtime.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    tb = load_tensors(b)
    head = model.get_output_embeddings().weight
    assert torch.equal(head, tb["lm_head.weight" if not tie_b else "model.embed_tokens.weight"])
    ours, again = load_tensors(tmp_path / "out"), _merged_again(tmp_path, "out")
    assert sorted(again) == sorted(ours) and all(torch.equal(again[n], ours[n]) for n in ours)
    mixed = [PathHop(refs[0], 0, 1.0, refs[1], 0.5), PathHop(refs[1], 1)]
    if tie_a != tie_b:  # a `linear` export writes the host's tensor list: it cannot change the tying
        with pytest.raises(RecipeError, match="evolve.dataflow.head_from: .* tie_word_embeddings"):
            export_path(mixed, tmp_path / "mixed", host=refs[0], head_from=refs[1])
    else:
        export_path(mixed, tmp_path / "mixed", host=refs[0], head_from=refs[1])
        assert torch.equal(load_tensors(tmp_path / "mixed")["model.embed_tokens.weight"], tb["model.embed_tokens.weight"])


@pytest.mark.parametrize("weighted", [False, True])
def test_tied_llava_and_lm_keep_the_image_row_in_the_shared_matrix(tmp_path, weighted):
    a = build_tiny_model("llava", seed=3, tie_word_embeddings=True)
    b = perturb(build_tiny_lm_for("llava", seed=4), seed=9)
    b.config.tie_word_embeddings = True
    b.tie_weights()
    with torch.no_grad():  # realistic hidden states; tied heads give logits x the factor too: keep them ~10
        for model in (a, b):
            model.get_input_embeddings().weight.mul_(5)
        a.model.multi_modal_projector.linear_2.weight.mul_(10)
    refs = [str(save_model(a, tmp_path / "a", processor=tiny_processor("llava"))), str(save_model(b, tmp_path / "b"))]
    runtime = load_layer_path(refs, dtype=torch.float32, head=1)
    count = runtime.layer_counts[0]
    hops = [HopSpec(1, p, 1.1, 0, 0.4) if weighted else HopSpec(1 - p % 2, p, 1.1) for p in range(count)]
    runtime.set_path(hops)
    assert runtime.model.lm_head.weight is runtime.lm.embed_tokens.weight  # tied to the private copy
    assert runtime.lm.embed_tokens is not runtime._keep[0].model.embed_tokens
    _export(hops, refs, tmp_path / "out", host=refs[0], head_from=refs[1])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    inputs = smoke_inputs("llava", runtime.processor)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, runtime.model(**inputs).logits, rtol=0, atol=1e-5)
    assert model.config.tie_word_embeddings and "lm_head.weight" not in load_tensors(tmp_path / "out")
    image, embed = model.config.image_token_id, model.get_input_embeddings().weight
    own = b.get_input_embeddings().weight
    others = [r for r in range(embed.shape[0]) if r != image]
    assert torch.equal(embed[others], own[others]) and torch.equal(embed[image], a.get_input_embeddings().weight[image])
    ours, again = load_tensors(tmp_path / "out"), _merged_again(tmp_path, "out")
    assert sorted(again) == sorted(ours) and all(torch.equal(again[n], ours[n]) for n in ours)


def test_head_from_is_named_resolved_and_checked(tmp_path):
    aliases = [["zoo:vlm", "/x/vlm", "vlm"], ["zoo:ja_lm", "/x/ja_lm", "ja_lm"]]
    assert host_index("zoo:ja_lm", aliases, key="evolve.dataflow.head_from") == 1
    assert host_index(None, aliases, key="evolve.dataflow.head_from", default=1) == 1
    with pytest.raises(RecipeError, match="evolve.dataflow.head_from: 'math' is not one of the recipe's models"):
        host_index("math", aliases, key="evolve.dataflow.head_from")
    config = parse_evolve({"dataflow": {"variant": "same_size", "head_from": "ja_lm"},
                           "fitness": {"tasks": [{"task": "ja_math"}]}})
    assert config.dataflow.head_from == "ja_lm"
    assert DataflowSpace(["A", "B"], [2, 2], config, head=1).describe()["head_from"] == "B"
    assert "head_from" not in DataflowSpace(["A", "B"], [2, 2], config).describe()
    a = save_model(build_tiny_model("llama", seed=1, num_hidden_layers=2), tmp_path / "a")
    b = save_model(build_tiny_model("llama", seed=2, num_hidden_layers=2, vocab_size=300), tmp_path / "b")
    with pytest.raises(RecipeError, match="evolve.dataflow.head_from: .*b: model.embed_tokens.weight has 300 rows, "
                                          ".* need the host's vocabulary"):
        load_layer_path([str(a), str(b)], names=["a", "b"], head=1)
    with pytest.raises(RecipeError, match="evolve.dataflow.head_from: b: embed_tokens has shapes .* host's vocabulary"):
        lend_head(AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b),
                  "evolve.dataflow.head_from: b")


def test_ray_fitness_factory_lends_the_head_too(tmp_path):
    from vlmmerge.dataflow.materializer import DataflowFitness

    a, b = _pair(tmp_path, "llama")
    config = parse_evolve({"dataflow": {"variant": "same_size", "head_from": "b"},
                           "fitness": {"tasks": [{"task": "ja_math"}], "limit": 2}})
    fitness = DataflowFitness([str(a), str(b)], ["a", "b"], config, torch.float32, "cpu", host=0, head=1)()
    runtime = fitness.materializer.runtime
    assert runtime.head == 1 and fitness.materializer.space.describe()["head_from"] == str(b)
    assert torch.equal(runtime.model.lm_head.weight, load_tensors(b)["lm_head.weight"])


@pytest.mark.slow
def test_evolve_with_head_from_writes_what_it_scored(tmp_path):
    from vlmmerge.evaluation import load_model_for_eval
    from vlmmerge.search import run_evolution
    from vlmmerge.search.evolve import dry_run
    from vlmmerge.search.fitness import make_evaluator, weighted_fitness

    torch.set_num_threads(1)
    recipe = {
        "name": "head", "merge_method": "passthrough", "dtype": "float32", "tokenizer_source": "zoo:ja_lm",
        "models": [{"model": "zoo:ja_lm"}, {"model": "zoo:math_lm"}],
        "evolve": {"dataflow": {"variant": "same_size", "same_size_mix": "weighted", "head_from": "zoo:math_lm"},
                   "sigma0": 0.3, "popsize": 4, "budget": 4,
                   "fitness": {"tasks": [{"task": "ja_math", "metric": "accuracy_in_language"}], "limit": 12,
                               "batch_size": 12}},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert dry_run(tmp_path / "r.yaml")["head_from"] == "zoo:math_lm"
    summary = run_evolution(tmp_path / "r.yaml", tmp_path / "run", progress=False)
    head = summary["space"]["head_from"]
    assert head.endswith("math_lm") and "host" not in summary["space"]
    written = yaml.safe_load((tmp_path / "run" / "best-recipe.yaml").read_text())
    assert {m["model"]: m["parameters"]["weight"][-1] for m in written["models"]}[head] == {"value": 1.0}
    model, tokenizer = load_model_for_eval(tmp_path / "run" / "best-model")
    config = parse_evolve(recipe["evolve"])
    evaluator = make_evaluator(config.fitness, config.seed)
    fitness, _ = weighted_fitness(evaluator.evaluate(model, tokenizer), config.fitness, evaluator.tasks)
    assert fitness == summary["best"]["fitness"] == summary["exported_fitness"]
    ours, lent = load_tensors(tmp_path / "run" / "best-model"), load_tensors(head)
    assert all(torch.equal(ours[n], lent[n]) for n in LM_HEAD)
    bad = {**recipe, "evolve": {**recipe["evolve"], "dataflow": {"variant": "same_size", "head_from": "zoo:vlm"}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(RecipeError, match="evolve.dataflow.head_from: 'zoo:vlm' is not one of the recipe's models"):
        dry_run(tmp_path / "bad.yaml")
