"""Checkpoints for the merge-speed benchmark: three Mistral-shaped bf16 safetensors folders (a base
and two "fine-tunes", base + small seeded noise), generated tensor by tensor from a meta-device
model's shapes and cached, so no full-precision model is ever materialised."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from vlmmerge.checkpoint.output import atomic_output_dir

DEFAULT_CACHE = Path(os.environ.get("VLMMERGE_BENCH_CACHE", Path.home() / ".cache" / "vlmmerge" / "bench"))
CHECKPOINT_VERSION = 1  # bump when the generated weights change

# Mistral-shaped configs. "1b": 22 layers, hidden 2048, GQA 32/8 heads, MLP 5632, vocab 32000
# (1.1B parameters, 2.2 GB in bf16).
SIZES: dict[str, dict] = {
    "1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=8, shard_bytes=1_000_000_000,
    ),
    "mid": dict(  # ~150M parameters: for iterating on a shared machine (the 1B run takes > 15 min there)
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=16, num_key_value_heads=4, shard_bytes=200_000_000,
    ),
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, shard_bytes=100_000,
    ),
}
MODEL_NAMES = ("base", "ft1", "ft2")
INIT_STD = 0.02
FINETUNE_STD = 0.002  # fine-tune deltas: 10% of the weights' scale


def _tensor_seed(model_seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{model_seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def mistral_config(size: str):
    from transformers import MistralConfig

    spec = {k: v for k, v in SIZES[size].items() if k != "shard_bytes"}
    return MistralConfig(
        **spec, max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="bfloat16",
        architectures=["MistralForCausalLM"],
    )


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's parameters, from a meta-device model (no memory)."""
    from transformers import MistralForCausalLM

    with torch.device("meta"):
        model = MistralForCausalLM(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def generate_tensor(name: str, shape: tuple[int, ...], model_index: int) -> torch.Tensor:
    """Model 0 is the base; model i > 0 is the base plus seeded noise. bf16, one tensor at a time."""
    if name.endswith("norm.weight"):
        base = torch.ones(shape, dtype=torch.float32)
    else:
        gen = torch.Generator().manual_seed(_tensor_seed(0, name))
        base = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(INIT_STD)
    if model_index:
        gen = torch.Generator().manual_seed(_tensor_seed(model_index, name))
        base.add_(torch.randn(shape, generator=gen, dtype=torch.float32), alpha=FINETUNE_STD)
    return base.to(torch.bfloat16)


def write_checkpoint(folder: Path, config, shapes: dict[str, tuple[int, ...]], model_index: int, shard_bytes: int) -> None:
    """A transformers-style sharded safetensors folder, written shard by shard (<= one shard in RAM)."""
    from safetensors.torch import save_file

    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * max(1, math.prod(shape))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    total = sum(2 * math.prod(s) for s in shapes.values())
    with atomic_output_dir(folder, overwrite=True) as tmp:
        config.save_pretrained(tmp)
        weight_map = {}
        for index, names in enumerate(shards, start=1):
            file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            tensors = {n: generate_tensor(n, shapes[n], model_index) for n in names}
            save_file(tensors, str(tmp / file), metadata={"format": "pt"})
            weight_map.update({n: file for n in names})
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )


def build_checkpoints(size: str, cache_dir: Path = DEFAULT_CACHE, log=print) -> dict[str, Path]:
    """The base and two fine-tunes for `size`, built once and reused (a `.complete` marker guards it)."""
    root = Path(cache_dir) / f"mistral-{size}-v{CHECKPOINT_VERSION}"
    paths = {name: root / name for name in MODEL_NAMES}
    marker = root / ".complete"
    if marker.exists() and all((p / "model.safetensors.index.json").exists() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    config = mistral_config(size)
    shapes = parameter_shapes(config)
    params = sum(math.prod(s) for s in shapes.values())
    log(f"building {size} checkpoints ({params / 1e9:.2f}B parameters each) under {root}")
    for index, name in enumerate(MODEL_NAMES):
        start = time.perf_counter()
        write_checkpoint(paths[name], config, shapes, index, SIZES[size]["shard_bytes"])
        log(f"  {name}: {time.perf_counter() - start:.1f} s")
    marker.write_text(json.dumps({"parameters": params, "version": CHECKPOINT_VERSION}))
    return paths


# ---------------------------------------------------------------------------------------------
# Recipes and commands
