"""Builders shared by the core tests: a base LM, fine-tunes of it, and a VLM whose language side
is a fine-tune of the same base (the paper's setting in miniature)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from vlmmerge.testing.tiny import build_tiny_lm_for, build_tiny_model, save_model


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def vlm_from_base(family: str, base_lm: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A VLM whose language side starts from `base_lm`'s weights (then fine-tuned by noise)."""
    vlm = build_tiny_model(family, seed=seed)
    prefix = "model.text_model." if family in ("idefics3", "smolvlm") else "model.language_model."
    base_state = base_lm.state_dict()
    vlm_state = vlm.state_dict()
    with torch.no_grad():
        for name, value in vlm_state.items():
            lm_name = "model." + name[len(prefix):] if name.startswith(prefix) else name
            if name.startswith(prefix) or name == "lm_head.weight":
                source = base_state[lm_name]
                rows = min(source.shape[0], value.shape[0])
                value[:rows].copy_(source[:rows])
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, param in vlm.named_parameters():
            if name.startswith(prefix) or name.startswith("lm_head"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return vlm


def make_world(root: Path, family: str = "llava", lm_vocab: int | None = None) -> dict[str, Path]:
    """base LM, two LM fine-tunes, and a VLM fine-tuned from the same base; saved as folders."""
    base = build_tiny_lm_for(family, seed=1, vocab_size=lm_vocab)
    ft_a = perturb(build_tiny_lm_for(family, seed=1, vocab_size=lm_vocab), seed=11)
    ft_b = perturb(build_tiny_lm_for(family, seed=1, vocab_size=lm_vocab), seed=12)
    vlm = vlm_from_base(family, base, seed=3)
    return {
        "base": save_model(base, root / "base"),
        "ft_a": save_model(ft_a, root / "ft_a"),
        "ft_b": save_model(ft_b, root / "ft_b"),
        "vlm": save_model(vlm, root / "vlm"),
    }


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder keyed by runtime name, read back through transformers' loader."""
    from vlmmerge.checkpoint import Checkpoint

    checkpoint = Checkpoint(folder)
    return {name: checkpoint.get(name) for name in checkpoint.names}


def disk_keys(folder: Path) -> set[str]:
    keys: set[str] = set()
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def make_evolve_world(root: Path) -> dict:
    """A tiny LLaVA world (base, vlm, fine-tunes) plus a toy caption set: the inputs of evolve tests."""
    from vlmmerge.evaluation.toy import write_toy_caption_set

    paths = make_world(root, "llava")
    paths["set"] = write_toy_caption_set(root / "sets" / "toy_caption")
    return paths
