"""Reading checkpoints lazily by runtime name, and writing outputs atomically."""

from vlmmerge.checkpoint.files import WeightFiles, resolve_model_path
from vlmmerge.checkpoint.naming import KeyMapper, build_meta_model, model_class_for
from vlmmerge.checkpoint.reader import Checkpoint, TensorInfo
from vlmmerge.checkpoint.writer import (
    PlannedTensor,
    ShardedSafetensorsWriter,
    StreamingSafetensorsWriter,
    parse_size,
)
from vlmmerge.checkpoint.output import atomic_output_dir

__all__ = [
    "Checkpoint",
    "KeyMapper",
    "PlannedTensor",
    "ShardedSafetensorsWriter",
    "StreamingSafetensorsWriter",
    "TensorInfo",
    "WeightFiles",
    "atomic_output_dir",
    "build_meta_model",
    "model_class_for",
    "parse_size",
    "resolve_model_path",
]
