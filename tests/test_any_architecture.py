"""Causal LMs outside the family table (Granite, GPT-2, Phi, Falcon, GraniteMoE) merge with per-layer
parameters: every tensor matches the linear formula at its layer's t, and the output generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers as t

from core_helpers import perturb, write_recipe
from vlmmerge.anatomy import Anatomy
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.engine import run_merge
from vlmmerge.inspection import inspect_models

VOCAB = 64
_TOKENS = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **_TOKENS)

CONFIGS = {
    "granite": lambda: t.GraniteConfig(num_key_value_heads=2, **_LLAMA_LIKE),
    "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **_TOKENS),
    "phi": lambda: t.PhiConfig(**_LLAMA_LIKE),
    "falcon": lambda: t.FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **_TOKENS),
    "granitemoe": lambda: t.GraniteMoeConfig(
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **_LLAMA_LIKE
    ),
}
# Written independently of vlmmerge's pattern: the decoder-layer index of each architecture's names.
_LAYER = re.compile(r"^(?:model\.layers|transformer\.h)\.(\d+)\.")


def _model(kind: str, seed: int) -> torch.nn.Module:
    config = CONFIGS[kind]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = t.AutoModelForCausalLM.from_config(config)
    return perturb(model, seed=seed + 100).eval()


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _expected_weight_a(name: str, layers: int) -> float:
    match = _LAYER.match(name)
    depth = int(match.group(1)) / (layers - 1) if match else 0.0
    return 0.2 + (0.8 - 0.2) * depth


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_unlisted_causal_lm_merges_per_layer_and_generates(tmp_path: Path, kind: str) -> None:
    ft_a, ft_b = _model(kind, seed=1), _model(kind, seed=2)
    paths = {"a": _save(ft_a, tmp_path / "a"), "b": _save(ft_b, tmp_path / "b")}
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "merge_method": "linear",
        "models": [
            {"model": str(paths["a"]), "parameters": {"weight": [0.2, 0.8]}},
            {"model": str(paths["b"]), "parameters": {"weight": [0.8, 0.2]}},
        ],
        "dtype": "float32",
    })
    out = tmp_path / "out"
    run_merge(recipe, out, progress=False)

    merged = t.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged) is type(ft_a)
    state_a, state_b = ft_a.state_dict(), ft_b.state_dict()
    layers = 2
    layer_tensors = 0
    for name, value in merged.state_dict().items():
        if not value.is_floating_point():
            continue
        w = _expected_weight_a(name, layers)
        expected = w * state_a[name] + (1 - w) * state_b[name]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name}")
        layer_tensors += _LAYER.match(name) is not None
    assert layer_tensors > 0
    ids = torch.tensor([[1, 5, 9, 13]])
    generated = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 3)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("transformer.h.3.attn.c_attn.weight", 3),
        ("model.layers.1.mlp.experts.7.w1.weight", 1),
        ("transformer.blocks.0.ffn.weight", 0),
        ("model.decoder.layers.2.fc1.weight", 2),
        ("h.4.ln_1.weight", 4),
        ("transformer.wte.weight", None),
        ("model.norm.weight", None),
        ("lm_head.weight", None),
    ],
)
def test_layer_index_from_tensor_names(name: str, layer: int | None) -> None:
    assert Anatomy.layer_index(name) == layer


def test_gpt2_anatomy_is_text_only(tmp_path: Path) -> None:
    anatomy = Anatomy(Checkpoint(_save(_model("gpt2", seed=1), tmp_path / "gpt2")))
    assert not anatomy.is_vlm and anatomy.family.name == "generic_causal_lm"
    assert anatomy.embed_name == "transformer.wte.weight"
    assert anatomy.num_layers == 2 and anatomy.tied
    assert anatomy.to_lm_name("transformer.h.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert set(anatomy.components["language"]) | {"transformer.wte.weight"} >= {
        n for n in anatomy.checkpoint.names if n != "lm_head.weight"
    }


def test_gpt2_inspects_against_a_finetune(tmp_path: Path) -> None:
    a = _save(_model("gpt2", seed=1), tmp_path / "a")
    b = _save(_model("gpt2", seed=2), tmp_path / "b")
    report = inspect_models(str(a), against=[str(b)])
    assert report["num_layers"] == 2 and report["tied_embeddings"] is True
    assert report["against"][0]["ok"] and report["against"][0]["problems"] == []
