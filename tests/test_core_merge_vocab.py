"""Compatibility before the first byte: host-only tensors, tying, and the vocabulary rows kept from the host."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core_helpers import load_tensors, make_world, perturb, write_recipe
from vlmmerge.cli import main as cli_main
from vlmmerge.engine import merge_tensor, plan_merge, run_merge
from vlmmerge.errors import IncompatibleModelsError
from vlmmerge.testing import added_token_id, build_tiny_lm_for, save_model

EMB = "model.language_model.embed_tokens.weight"
LM_EMB = "model.embed_tokens.weight"
MISTRAL3_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]")


@pytest.fixture(scope="module")
def mistral3(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("mistral3"), "mistral3")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("llava"), "llava")


def _task_arithmetic(world, host="vlm", other="ft_a"):
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(world["base"]),
        "models": [
            {"model": str(world[host]), "parameters": {"weight": 1.0}},
            {"model": str(world[other]), "parameters": {"weight": 0.5}},
        ],
        "dtype": "float32",
    }


def _embedding(plan):
    return next(t for t in plan.tensors if t.name == EMB)


def test_every_id_the_member_tokenizer_lacks_keeps_the_hosts_row(mistral3):
    """Mistral 3's [IMG_BREAK] / [IMG_END] (no config attribute names them) and [INST] stay the host's."""
    plan = plan_merge(_task_arithmetic(mistral3))
    ids = [added_token_id("mistral3", token) for token in MISTRAL3_TOKENS]
    assert _embedding(plan).host_rows == tuple(ids)
    merged = merge_tensor(plan, _embedding(plan))
    vlm, base, ft = (load_tensors(mistral3[k]) for k in ("vlm", "base", "ft_a"))
    assert torch.equal(merged[ids], vlm[EMB][ids])
    rows = [r for r in range(merged.shape[0]) if r not in ids]
    want = vlm[EMB] + 0.5 * (ft[LM_EMB] - base[LM_EMB])
    torch.testing.assert_close(merged[rows], want[rows], rtol=0, atol=1e-6)
    assert any("[IMG_BREAK]" in note for note in plan.notes)


def test_kept_rows_never_enter_the_method(llava, tmp_path):
    """A huge host row must not move TIES' top-k threshold for the other rows (sliced out before the method)."""
    image = added_token_id("llava", "<image>")
    loud = tmp_path / "loud_vlm"
    shutil.copytree(llava["vlm"], loud)
    weights = load_file(loud / "model.safetensors")
    key = next(k for k, v in weights.items() if k.endswith("embed_tokens.weight"))
    weights[key][image] *= 1000
    save_file(weights, loud / "model.safetensors", metadata={"format": "pt"})

    def merged_embedding(vlm):
        recipe = {
            "merge_method": "ties",
            "base_model": str(llava["base"]),
            "models": [
                {"model": str(vlm), "parameters": {"weight": 1.0, "density": 0.3}},
                {"model": str(llava["ft_a"]), "parameters": {"weight": 0.5, "density": 0.3}},
            ],
            "dtype": "float32",
        }
        plan = plan_merge(recipe)
        return merge_tensor(plan, _embedding(plan))

    quiet, noisy = merged_embedding(llava["vlm"]), merged_embedding(loud)
    others = [r for r in range(quiet.shape[0]) if r != image]
    assert torch.equal(quiet[others], noisy[others])
    assert torch.equal(noisy[image], weights[key][image])


def test_host_only_language_tensors_fail_before_anything_is_written(llava, tmp_path):
    lm = build_tiny_lm_for("llava", seed=1)
    lm.config.num_hidden_layers = 1
    shallow = save_model(type(lm)(lm.config), tmp_path / "shallow")
    recipe = _task_arithmetic(dict(llava, shallow=shallow), other="shallow")
    with pytest.raises(IncompatibleModelsError, match=r"lacks.*model\.layers\.1\.\w+"):
        plan_merge(recipe)
    with pytest.raises(IncompatibleModelsError, match=r"model\.layers\.1\."):
        run_merge(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_id_mapped_to_different_tokens_is_refused_naming_both(llava, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(llava["ft_a"], renamed)
    doc = json.loads((renamed / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    token = next(t for t, i in vocab.items() if i == 100)
    vocab["zz_other"] = vocab.pop(token)
    (renamed / "tokenizer.json").write_text(json.dumps(doc))
    recipe = _task_arithmetic(dict(llava, renamed=renamed), other="renamed")
    with pytest.raises(IncompatibleModelsError, match=f"id 100 is {token!r} here but 'zz_other' there"):
        run_merge(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tied_host_says_it_drops_an_untied_members_head(mistral3, tmp_path, capsys):
    lm = build_tiny_lm_for("mistral3", seed=1)
    lm.config.tie_word_embeddings = False
    untied = save_model(perturb(type(lm)(lm.config), seed=5), tmp_path / "untied")
    assert "lm_head.weight" in load_tensors(untied)
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(mistral3["vlm"]), "parameters": {"weight": 1.0}},
            {"model": str(untied), "parameters": {"weight": 1.0}},
        ],
        "dtype": "float32",
    }
    plan = plan_merge(recipe)
    dropped = [note for note in plan.notes if "lm_head is not used" in note]
    assert len(dropped) == 1 and str(untied) in dropped[0]
    result = run_merge(recipe, tmp_path / "out", progress=False)
    assert dropped[0] in result.notes
    assert dropped[0] in (tmp_path / "out" / "README.md").read_text()
    recipe_path = write_recipe(tmp_path / "r.yaml", recipe)
    assert cli_main(["merge", str(recipe_path), str(tmp_path / "cli"), "--quiet"]) == 0
    assert f"note: {dropped[0]}" in capsys.readouterr().out


@pytest.mark.parametrize(("merged_rows", "host_rows"), [
    (10, ()), (10, (0,)), (10, (9,)), (10, (3, 4, 7)), (8, (2, 5)), (8, (0, 1, 2, 3, 4, 5, 6, 7)), (7, (1, 6)),
])
def test_placed_rows_are_the_host_rows_and_the_merged_rows_in_order(merged_rows, host_rows):
    """`place_rows` (each row written once) against the host copy + index_copy_ of the method's rows."""
    from vlmmerge.engine.compute import place_rows
    from vlmmerge.engine.plan import TensorPlan

    host = torch.arange(12 * 3, dtype=torch.bfloat16).reshape(12, 3)
    plan = TensorPlan(name="embed", shape=(12, 3), dtype=torch.bfloat16, component="embeddings",
                      merged_rows=merged_rows, host_rows=host_rows)
    rows = plan.method_rows()
    count = len(range(merged_rows)[rows]) if isinstance(rows, slice) else rows.numel()
    merged = -1.0 - torch.arange(count * 3, dtype=torch.float32).reshape(count, 3)
    expected = host.to(torch.float32)
    if isinstance(rows, slice):
        expected[rows] = merged
    else:
        expected.index_copy_(0, rows, merged)
    full = torch.full((12, 3), float("nan"))
    place_rows(full, merged, host, merged_rows, host_rows)
    assert torch.equal(full, expected)
    leading = plan.leading_method_rows()
    assert leading == (count if all(row >= count for row in host_rows) else None)
    if leading is not None:  # the merge wrote its rows at the start of `full` already: kept there
        full = torch.full((12, 3), float("nan"))
        full[:count] = merged
        place_rows(full, full[:count], host, merged_rows, host_rows)
        assert torch.equal(full, expected)
    with pytest.raises(ValueError, match="merged rows"):
        place_rows(full, merged[1:], host, merged_rows, host_rows) if count else place_rows(
            full, torch.zeros(1, 3), host, merged_rows, host_rows)
