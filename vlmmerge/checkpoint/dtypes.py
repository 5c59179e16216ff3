"""The dtype tables: names a recipe or a command line may give, and safetensors' header codes."""

from __future__ import annotations

import torch

# Storage dtypes by the names recipes (mergekit's `dtype:`) and command lines use.
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# safetensors header code -> torch dtype, and back.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_DTYPE_NAMES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def dtype_named(name: str) -> torch.dtype | None:
    """The storage dtype a name stands for (case-insensitive), or None for an unknown name."""
    return DTYPES.get(str(name).lower())
