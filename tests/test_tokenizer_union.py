"""mergekit 0.1.5's tokenizer handling: `tokenizer_source: union`, `base`, a model, and the
`tokenizer: {source, tokens, pad_to_multiple_of}` form, compared with mergekit's own merge (`mergekit-yaml`'s
`run_merge`, in process) on tiny Llama
models whose tokenizers add different tokens (so ids move between models). Same output vocabulary,
same row for every token (compared by token: mergekit's id order for tokens several models add
follows a Python set), same other tensors; the output loads and generates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core_helpers import load_tensors, perturb, write_recipe
from vlmmerge.engine import plan_merge, run_merge
from vlmmerge.errors import RecipeError
from vlmmerge.testing.tiny import build_tiny_model, save_model

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _variant(root: Path, name: str, seed: int | None, added: list[str], special: list[str]) -> Path:
    folder = save_model(build_tiny_model("llama", seed=1), root / f"{name}_tmp")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(added)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
    model = AutoModelForCausalLM.from_pretrained(folder)
    if added or special:  # rows = tokens (the stored 320 rows are cut: ids move between models)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if seed is not None:
        perturb(model, seed=seed)
    model.save_pretrained(root / name)
    tokenizer.save_pretrained(root / name)
    shutil.rmtree(folder)
    return root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {
        "base": _variant(root, "base", None, [], []),
        "a": _variant(root, "a", 21, ["<a_only>", "<shared>"], []),
        "b": _variant(root, "b", 22, ["<shared>", "<b_only>"], ["<|b_special|>"]),
    }


def _mergekit(recipe: Path, out: Path) -> None:
    """mergekit 0.1.5's own `run_merge` on the recipe, in process (what `mergekit-yaml` calls)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions
    from mergekit.merge import run_merge as mergekit_run_merge

    text = recipe.read_text()
    with torch.random.fork_rng(devices=[]):
        mergekit_run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(out),
                           MergeOptions(cuda=False, quiet=True, random_seed=0, lazy_unpickle=False), config_source=text)


def _by_token(folder: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    return AutoTokenizer.from_pretrained(folder).get_vocab(), load_tensors(folder)


def _cases(w):
    a, b, base = str(w["a"]), str(w["b"]), str(w["base"])
    ta = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
          "models": [{"model": a, "parameters": {"weight": 0.7}}, {"model": b, "parameters": {"weight": 0.5}}]}
    return {
        "union_task_arithmetic": {**ta, "tokenizer_source": "union"},
        "union_linear": {"merge_method": "linear", "base_model": a, "dtype": "float32", "tokenizer_source": "union",
                         "models": [{"model": a, "parameters": {"weight": 0.3}}, {"model": b, "parameters": {"weight": 0.7}}]},
        "base_ties": {**ta, "merge_method": "ties", "tokenizer_source": "base",
                      "models": [{"model": a, "parameters": {"weight": 0.7, "density": 0.6}},
                                 {"model": b, "parameters": {"weight": 0.5, "density": 0.5}}]},
        "model_b_task_arithmetic": {**ta, "tokenizer_source": b},
        "tokenizer_form": {**ta, "tokenizer": {
            "source": "union", "pad_to_multiple_of": 16,
            "tokens": {"<new_zero>": {"source": {"kind": "zero"}},
                       "<a_only>": {"source": {"kind": "model_token", "model": b, "token": "</s>"}},
                       "<shared>": {"source": a, "force": True}},
        }},
    }


CASES = ["union_task_arithmetic", "union_linear", "base_ties", "model_b_task_arithmetic", "tokenizer_form"]


@pytest.mark.parametrize("case", CASES)
def test_same_vocabulary_and_rows_as_mergekit(world, tmp_path: Path, case: str) -> None:
    path = write_recipe(tmp_path / f"{case}.yaml", _cases(world)[case])
    _mergekit(path, tmp_path / "mergekit")
    run_merge(path, tmp_path / "ours", progress=False)
    (their_vocab, theirs), (our_vocab, ours) = _by_token(tmp_path / "mergekit"), _by_token(tmp_path / "ours")
    assert set(our_vocab) == set(their_vocab)
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        got = ours[name]
        assert got.shape == expected.shape, name
        if name in (EMBED, HEAD):
            ids = sorted(our_vocab.values())
            their_ids = [their_vocab[tok] for tok, _ in sorted(our_vocab.items(), key=lambda kv: kv[1])]
            torch.testing.assert_close(got[ids], expected[their_ids], rtol=0, atol=1e-5, msg=f"{case}: {name}")
            torch.testing.assert_close(got[len(ids):], expected[len(ids):], rtol=0, atol=1e-5)  # padding rows
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5, msg=f"{case}: {name}")
    config = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").config
    assert config.vocab_size == ours[EMBED].shape[0]


def test_union_output_generates_and_rows_follow_mergekit_rules(world, tmp_path: Path) -> None:
    """Independent of mergekit: a token only one model has takes that model's row; a token two
    fine-tunes have but the base lacks takes their mean in the base's place."""
    path = write_recipe(tmp_path / "r.yaml", _cases(world)["union_task_arithmetic"])
    run_merge(path, tmp_path / "ours", progress=False)
    vocab, out = _by_token(tmp_path / "ours")
    a_vocab, a = _by_token(world["a"])
    b_vocab, b = _by_token(world["b"])
    assert {"<a_only>", "<b_only>", "<shared>", "<|b_special|>"} <= set(vocab)
    # <a_only>: a's row for every model (base and b included): base + 0.7 * 0 + 0.5 * 0
    torch.testing.assert_close(out[EMBED][vocab["<a_only>"]], a[EMBED][a_vocab["<a_only>"]])
    # <shared>: base lacks it, the default is the mean of a's and b's rows
    row_a, row_b = a[EMBED][a_vocab["<shared>"]], b[EMBED][b_vocab["<shared>"]]
    mean = (row_a + row_b) / 2
    torch.testing.assert_close(out[EMBED][vocab["<shared>"]], mean + 0.7 * (row_a - mean) + 0.5 * (row_b - mean))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = AutoTokenizer.from_pretrained(tmp_path / "ours")("x <b_only> y", return_tensors="pt").input_ids
    assert vocab["<b_only>"] in ids[0].tolist()
    assert model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_identical_tokenizers_keep_padding_rows(world, tmp_path: Path) -> None:
    """Documented difference: when no token moves, the stored rows (padding past the tokenizer
    included) are kept; mergekit would cut the vocabulary to the tokenizer's size."""
    base = str(world["base"])
    other = save_model(perturb(build_tiny_model("llama", seed=1), seed=5), tmp_path / "other")
    plan = plan_merge({"merge_method": "linear", "tokenizer_source": "base", "base_model": base,
                       "models": [{"model": base, "parameters": {"weight": 0.5}}, {"model": str(other), "parameters": {"weight": 0.5}}]})
    assert plan.vocabulary is None
    embed = next(t for t in plan.tensors if t.name == EMBED)
    assert embed.shape[0] == 320 > len(AutoTokenizer.from_pretrained(base))


def test_tokenizer_keys_errors(world) -> None:
    a, b = str(world["a"]), str(world["b"])
    recipe = {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 1.0}}, {"model": b, "parameters": {"weight": 1.0}}]}
    with pytest.raises(RecipeError, match="tokenizer_source and tokenizer: give one of them"):
        plan_merge({**recipe, "tokenizer_source": "union", "tokenizer": {"source": "base"}})
    with pytest.raises(RecipeError, match=r"^tokenizer\.pad_to_multiple_of: "):
        plan_merge({**recipe, "tokenizer": {"pad_to_multiple_of": 0}})


def test_chat_template_auto_and_literal_as_mergekit(world, tmp_path: Path) -> None:
    a, b, base = str(world["a"]), str(world["b"]), str(world["base"])
    literal = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    for setting in ("auto", literal):
        recipe = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32", "chat_template": setting, "tokenizer_source": "union",
                  "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}]}
        path = write_recipe(tmp_path / "chat.yaml", recipe)
        name = "auto" if setting == "auto" else "literal"
        _mergekit(path, tmp_path / f"mk_{name}")
        run_merge(path, tmp_path / f"us_{name}", progress=False)
        ours = AutoTokenizer.from_pretrained(tmp_path / f"us_{name}").chat_template
        assert ours == AutoTokenizer.from_pretrained(tmp_path / f"mk_{name}").chat_template
        assert ours.strip() == (AutoTokenizer.from_pretrained(a).chat_template.strip() if setting == "auto" else literal)
    for bad, message in (("chatml", "mergekit's bundled templates"), ("hello", "neither 'auto' nor a Jinja")):
        with pytest.raises(RecipeError, match=message):
            plan_merge({**recipe, "chat_template": bad})


def test_a_live_merge_refuses_what_it_cannot_hold(world) -> None:
    """A live merge keeps the host's rows and layers: a re-indexing tokenizer or a `slices:` stack is
    refused by name, not merged into wrong rows."""
    from vlmmerge.errors import VlmMergeError
    from vlmmerge.live import LiveMerge
    from vlmmerge.recipe import load_recipe

    recipe = load_recipe(_cases(world)["union_task_arithmetic"])
    live = LiveMerge(recipe.model_refs, str(world["a"]), load_processor=False)
    with pytest.raises(VlmMergeError, match="re-indexes the vocabulary"):
        live.apply(recipe)
    stack = load_recipe({"slices": [{"sources": [{"model": str(world["a"]), "layer_range": [0, 1]}]}],
                         "merge_method": "passthrough"})
    with pytest.raises(VlmMergeError, match="slices"):
        live.apply(stack)
