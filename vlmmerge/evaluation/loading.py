"""Load a model and its processor (VLM) or tokenizer (LLM) for evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlmmerge.checkpoint.dtypes import DTYPES, dtype_named
from vlmmerge.errors import CheckpointError


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = dtype_named(dtype)
    if resolved is None:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'")
    return resolved


def is_vision_language_config(config: Any) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING or getattr(config, "vision_config", None) is not None


def load_model_for_eval(path_or_hub_id: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, processor): AutoModelForImageTextToText + AutoProcessor for a VLM,
    AutoModelForCausalLM + AutoTokenizer for a text LM. Safetensors first; eval mode.
    ``dtype`` None means float32 on CPU and the checkpoint's dtype elsewhere."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
                              AutoTokenizer)

    source = str(path_or_hub_id)
    if Path(source).expanduser().exists():
        source = str(Path(source).expanduser())
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read a model config from {source}: {exc}") from exc
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is None:
        torch_dtype = torch.float32 if str(device) == "cpu" else "auto"
    vlm = is_vision_language_config(config)
    model_cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    try:
        model = model_cls.from_pretrained(source, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load {model_cls.__name__} from {source}: {exc}") from exc
    try:
        if vlm:
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        else:
            processor = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        kind = "processor" if vlm else "tokenizer"
        raise CheckpointError(f"cannot load the {kind} of {source}: {exc}") from exc
    if vlm and getattr(processor, "image_processor", None) is None:
        raise CheckpointError(f"{source} is a vision-language model but has no image processor files")
    model.to(device)
    model.eval()
    return model, processor
