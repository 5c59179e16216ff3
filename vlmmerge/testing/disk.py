"""Saving tiny models in every on-disk layout and format, and loading them back with the Auto classes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from vlmmerge.checkpoint.output import atomic_output_dir
from vlmmerge.testing.common import VLM_FAMILIES
from vlmmerge.testing.configs import family_of_config, family_of_model
from vlmmerge.testing.inputs import smoke_inputs
from vlmmerge.testing.processors import tiny_processor

LAYOUTS: tuple[str, ...] = ("default", "runtime", "hub_llava", "qwen2_vl_original")
FORMATS: tuple[str, ...] = ("safetensors", "bin")
HUB_LLAVA_FAMILIES: tuple[str, ...] = (
    "llava", "llava_next", "llava_onevision", "paligemma", "gemma3", "mistral3", "internvl",
)
QWEN2_VL_ORIGINAL_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")
# Vision towers that the hub nests one level deeper (`vision_tower.vision_model.*`).
_NESTED_VISION_TOWERS = ("CLIPVisionModel", "SiglipVisionModel")


def _replace_prefix(name: str, old: str, new: str) -> str | None:
    return new + name[len(old):] if name.startswith(old) else None


def hub_llava_name(runtime_name: str, nested_vision: bool) -> str:
    """Runtime name -> the name in a hub LLaVA-style checkpoint (`language_model.model.*` ...)."""
    rules = [
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model." if nested_vision else "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
    ]
    for old, new in rules:
        renamed = _replace_prefix(runtime_name, old, new)
        if renamed is not None:
            return renamed
    raise KeyError(f"tensor {runtime_name!r} has no place in the hub LLaVA layout")


def qwen2_vl_original_name(runtime_name: str) -> str:
    """Runtime name -> the name in an original Qwen2-VL checkpoint (`model.*`, `visual.*`, `lm_head.*`)."""
    for old, new in (("model.language_model.", "model."), ("model.visual.", "visual."), ("lm_head.", "lm_head.")):
        renamed = _replace_prefix(runtime_name, old, new)
        if renamed is not None:
            return renamed
    raise KeyError(f"tensor {runtime_name!r} has no place in the original Qwen2-VL layout")


def _is_tied(model: PreTrainedModel) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def layout_state_dict(model: PreTrainedModel, layout: str) -> dict[str, torch.Tensor]:
    """The tensors `save_model` writes for `layout`, by on-disk name (independent CPU copies)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    runtime = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in model.state_dict().items()}
    if layout == "runtime":
        return runtime
    if layout == "default":
        from safetensors.torch import load_file

        with tempfile.TemporaryDirectory() as scratch:
            model.save_pretrained(scratch)
            files = sorted(Path(scratch).glob("*.safetensors"))
            state: dict[str, torch.Tensor] = {}
            for file in files:
                state.update(load_file(file))
            return state
    family = family_of_model(model)
    if layout == "hub_llava":
        if family not in HUB_LLAVA_FAMILIES:
            raise ValueError(f"layout 'hub_llava' is for {HUB_LLAVA_FAMILIES}, not {family!r}")
        nested = type(model.model.vision_tower).__name__ in _NESTED_VISION_TOWERS
        tied = _is_tied(model)
        return {
            hub_llava_name(name, nested): tensor
            for name, tensor in runtime.items()
            if not (tied and name.startswith("lm_head."))  # hub checkpoints of tied models omit the head
        }
    if family not in QWEN2_VL_ORIGINAL_FAMILIES:
        raise ValueError(f"layout 'qwen2_vl_original' is for {QWEN2_VL_ORIGINAL_FAMILIES}, not {family!r}")
    return {qwen2_vl_original_name(name): tensor for name, tensor in runtime.items()}


def write_weights(
    state_dict: dict[str, torch.Tensor], folder: Path, fmt: str = "safetensors", max_shard_size: str | int | None = None
) -> list[Path]:
    """Write tensors as one file or shards + index, the file names transformers expects."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    pattern, index_name = (
        ("model{suffix}.safetensors", "model.safetensors.index.json") if fmt == "safetensors"
        else ("pytorch_model{suffix}.bin", "pytorch_model.bin.index.json")
    )
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern=pattern, max_shard_size=max_shard_size or "50GB"
    )
    written = []
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state_dict[name].contiguous() for name in names}
        path = folder / filename
        if fmt == "safetensors":
            save_file(shard, path, metadata={"format": "pt"})
        else:
            torch.save(shard, path)
        written.append(path)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)}
        (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(folder / index_name)
    return written


def save_model(
    model: PreTrainedModel,
    out_dir: Path | str,
    layout: str = "default",
    max_shard_size: str | int | None = None,
    fmt: str = "safetensors",
    processor: Any = None,
) -> Path:
    """Save `model` as a complete folder: weights in `layout`/`fmt`, config, generation config, processor.

    Layouts: "default" is exactly `save_pretrained` (transformers 5 writes the original/legacy key
    layout, see `layout_state_dict`); "runtime" holds every `model.state_dict()` key (tied copies
    included); "hub_llava" / "qwen2_vl_original" are the hub layouts of those families. `processor`
    defaults to `tiny_processor(family)`. The folder is written aside and renamed into place;
    `out_dir` must be absent or empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; known: {', '.join(FORMATS)}")
    family = family_of_model(model)
    processor = tiny_processor(family) if processor is None else processor
    with atomic_output_dir(out_dir) as staging:
        if layout == "default" and fmt == "safetensors":
            kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
            model.save_pretrained(staging, **kwargs)
        else:
            write_weights(layout_state_dict(model, layout), staging, fmt=fmt, max_shard_size=max_shard_size)
            model.config.save_pretrained(staging)
            if model.generation_config is not None:
                model.generation_config.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out_dir


def load_model(model_dir: Path | str, **kwargs: Any) -> PreTrainedModel:
    """Load a saved tiny folder with the right Auto class (image-text-to-text or causal LM), float32."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    auto = (
        transformers.AutoModelForImageTextToText if family_of_config(config) in VLM_FAMILIES
        else transformers.AutoModelForCausalLM
    )
    kwargs.setdefault("dtype", torch.float32)
    return auto.from_pretrained(model_dir, trust_remote_code=False, **kwargs).eval()


def load_processor(model_dir: Path | str) -> Any:
    """AutoProcessor for VLM folders, AutoTokenizer for causal-LM folders."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if family_of_config(config) in VLM_FAMILIES:
        return transformers.AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
    return transformers.AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def generate_smoke(model_dir: Path | str, max_new_tokens: int = 3) -> torch.Tensor:
    """Load a saved folder (Auto classes, no remote code), greedily generate exactly
    `max_new_tokens` tokens for the smoke prompt (with the smoke image for VLMs); the new ids, (1, n)."""
    config = transformers.AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    family = family_of_config(config)
    model = load_model(model_dir)
    inputs = smoke_inputs(family, load_processor(model_dir))
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    return output[:, inputs["input_ids"].shape[1]:]
