"""Mixture-of-Experts causal LMs (Mixtral, Qwen2-MoE, Qwen3-MoE) saved by transformers merge: the
per-expert tensors on disk are read through transformers' own conversion into the fused runtime
tensors (`experts.gate_up_proj`, `experts.down_proj`), every runtime tensor equals the method's
formula (per-layer weights for linear), and the output loads with AutoModelForCausalLM and generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers as t
from safetensors import safe_open

from core_helpers import perturb, write_recipe
from method_refs import naive_ties
from vlmmerge.checkpoint import Checkpoint
from vlmmerge.engine import run_merge
from vlmmerge.errors import CheckpointError

_COMMON = dict(
    vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
CONFIGS = {
    "mixtral": lambda: t.MixtralConfig(num_local_experts=3, num_experts_per_tok=2, **_COMMON),
    "qwen2_moe": lambda: t.Qwen2MoeConfig(
        num_experts=3, num_experts_per_tok=2, moe_intermediate_size=8, shared_expert_intermediate_size=16, **_COMMON
    ),
    "qwen3_moe": lambda: t.Qwen3MoeConfig(num_experts=3, num_experts_per_tok=2, moe_intermediate_size=8, **_COMMON),
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_FUSED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def _model(kind: str, seed: int, noise_seed: int | None) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = t.AutoModelForCausalLM.from_config(CONFIGS[kind]())
    return (perturb(model, seed=noise_seed) if noise_seed is not None else model).eval()


def _world(root: Path, kind: str) -> tuple[dict[str, Path], dict[str, dict[str, torch.Tensor]]]:
    models = {"base": _model(kind, 1, None), "a": _model(kind, 1, 11), "b": _model(kind, 1, 12)}
    paths = {}
    for key, model in models.items():
        model.save_pretrained(root / key)
        paths[key] = root / key
    return paths, {k: m.state_dict() for k, m in models.items()}


def _disk_keys(folder: Path) -> list[str]:
    keys = []
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            keys += list(handle.keys())
    return keys


def _generates(model: torch.nn.Module) -> None:
    ids = torch.tensor([[1, 5, 9, 13]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_transformers_saves_moe_per_expert_and_checkpoint_reads_fused(tmp_path: Path, kind: str) -> None:
    model = _model(kind, 1, 5)
    model.save_pretrained(tmp_path / "m")
    keys = _disk_keys(tmp_path / "m")
    assert any(re.search(r"\.experts\.\d+\.", k) for k in keys)  # the layout the reader used to refuse
    checkpoint = Checkpoint(tmp_path / "m")
    state = model.state_dict()
    assert sorted(checkpoint.names) == sorted(n for n in state if n != "lm_head.weight" or n in checkpoint)
    for name in checkpoint.names:
        assert torch.equal(checkpoint.get(name), state[name]), name
    assert any(name.endswith(_FUSED[0]) for name in checkpoint.names)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_moe_linear_per_layer_matches_formula_and_generates(tmp_path: Path, kind: str) -> None:
    paths, states = _world(tmp_path, kind)
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "merge_method": "linear",
        "models": [
            {"model": str(paths["a"]), "parameters": {"weight": [0.2, 0.8]}},
            {"model": str(paths["b"]), "parameters": {"weight": [0.8, 0.2]}},
        ],
        "dtype": "float32",
    })
    run_merge(recipe, tmp_path / "out", progress=False)
    merged = t.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    fused_seen = 0
    for name, value in merged.state_dict().items():
        match = _LAYER.match(name)
        w = 0.2 + 0.6 * (int(match.group(1)) if match else 0)  # t = layer / (2 - 1)
        expected = w * states["a"][name] + (1 - w) * states["b"][name]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name}")
        fused_seen += name.endswith(_FUSED)
    assert fused_seen == 4
    _generates(merged)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_moe_task_vector_methods_match_formula(tmp_path: Path, kind: str, method: str) -> None:
    paths, states = _world(tmp_path, kind)
    params = {"weight": 0.6} if method == "task_arithmetic" else {"weight": 0.6, "density": 0.5}
    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "merge_method": method,
        "base_model": str(paths["base"]),
        "models": [{"model": str(paths["a"]), "parameters": params}, {"model": str(paths["b"]), "parameters": params}],
        "dtype": "float32",
    })
    run_merge(recipe, tmp_path / "out", progress=False)
    merged = t.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    base, a, b = states["base"], states["a"], states["b"]
    for name, value in merged.state_dict().items():
        if method == "task_arithmetic":
            expected = base[name] + 0.6 * (a[name] - base[name]) + 0.6 * (b[name] - base[name])
        else:  # TIES on the whole runtime tensor (all experts of a layer together)
            flat = naive_ties(base[name].flatten().tolist(), [a[name].flatten().tolist(), b[name].flatten().tolist()],
                              [0.6, 0.6], [0.5, 0.5])
            expected = torch.tensor(flat).reshape(value.shape)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=f"{kind} {method}: {name}")
    _generates(merged)


def test_missing_expert_is_one_line_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = _model("mixtral", 1, 5)
    model.save_pretrained(tmp_path / "m")
    file = next((tmp_path / "m").glob("*.safetensors"))
    tensors = load_file(file)
    del tensors["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.experts\.gate_up_proj.*expert missing"):
        Checkpoint(tmp_path / "m")
